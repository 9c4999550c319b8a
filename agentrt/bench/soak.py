"""Soak test of long-lived sessions: many sessions through turns, swaps, saves, closes, reopens
and engine restarts on a small pool, then checks that nothing was lost or leaked.

Each session follows a script of turns (random prompt ids, then sampled tokens with the
session's seed). What a session must come back as is its history at its last completed
save: a close keeps it, a restart (without autosave) drops the turns after it. At the end
every session is reopened and compared with that history (token ids), and each history
is replayed from scratch on an engine with an unlimited pool: the tokens must be the same.

Sampled over time: RSS, open files, threads, pool blocks in use, swap files, checkpoint
bytes on disk and the newest full checkpoints' bytes. A leak is a trend after warm-up (a
least-squares slope over the last 2/3 of the samples), not noise. Also measured: the bytes
each save wrote by kind and session length, and the time to restore a chain of deltas
against a full checkpoint of the same moment.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

TEMP_PREFIX = ".tmp-"


@dataclass
class SoakConfig:
    """What a soak run does (see `agentrt bench soak --help`)."""

    sessions: int = 8
    minutes: float = 1.0
    num_blocks: int | None = None  # None: room for about two sessions of max_session_tokens
    block_size: int = 16
    save_every: int = 1  # turns between saves of a session
    restarts: int = 2  # engine restarts spread over the run
    close_prob: float = 0.15  # chance a session is closed after a save
    prompt_tokens: int = 24
    new_tokens: int = 16
    keep: int = 3
    seed: int = 0
    replay: bool = True
    max_session_tokens: int = 2000  # a session this long is closed and a new one takes its place
    min_turns: int = 0  # keep going past `minutes` until this many turns ran (slow machines)


@dataclass
class _Track:
    """One session's script and what it must come back as."""

    name: str
    seed: int
    turns: list[tuple[list[int], int]] = field(default_factory=list)  # done since the last save
    saved_turns: list[tuple[list[int], int]] = field(default_factory=list)
    saved_tokens: list[int] = field(default_factory=list)
    retired: bool = False


def tiny_model_dir(folder: Path, seed: int = 0) -> Path:
    """A small random-weight Llama with DMS (4 layers, 2 KV heads, head_dim 64) saved to `folder`."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from agentrt.dms import DMSConfig, DMSModel

    if (folder / "config.json").is_file():
        return folder
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=512,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=1 << 16,
    )
    hf = AutoModelForCausalLM.from_config(cfg).eval()
    DMSModel(hf, DMSConfig(window_size=16, initial_alpha_offset=2.0)).save_pretrained(folder)
    return folder


def _proc_status(key: str) -> int:
    """A number from /proc/self/status (VmRSS in kB, Threads), or 0 off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


def _open_files() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def _tree_bytes(folder: Path) -> tuple[int, int]:
    """(bytes of regular files under `folder`, how many of them are temp files)."""
    total = temps = 0
    if folder.is_dir():
        for p in folder.rglob("*"):
            if p.is_file():
                total += p.stat().st_size
                temps += p.name.startswith(TEMP_PREFIX)
    return total, temps


def _newest_full_bytes(store: Any) -> tuple[int, int, float]:
    """(sum over sessions of their newest full checkpoint's bytes, sessions counted, and the
    estimated bytes of full checkpoints of their newest restore points: each newest full
    checkpoint's bytes scaled by the slots its session's newest restore point holds)."""
    full: dict[str, Any] = {}
    newest: dict[str, Any] = {}
    for c in store.checkpoints():
        if c.missing:
            continue
        if newest.get(c.session_id) is None or c.created_at > newest[c.session_id].created_at:
            newest[c.session_id] = c
        if c.kind == "full" and (
            full.get(c.session_id) is None or c.created_at > full[c.session_id].created_at
        ):
            full[c.session_id] = c
    now = sum(f.size_bytes * newest[sid].slots / max(f.slots, 1) for sid, f in full.items())
    return sum(f.size_bytes for f in full.values()), len(full), now


def trend(ts: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over ts (0 with fewer than 3 points)."""
    if len(ts) < 3:
        return 0.0
    mt, my = statistics.fmean(ts), statistics.fmean(ys)
    den = sum((t - mt) ** 2 for t in ts)
    return 0.0 if den == 0 else sum((t - mt) * (y - my) for t, y in zip(ts, ys, strict=True)) / den


def leak_verdicts(samples: list[dict[str, float]], sessions: int) -> dict[str, dict[str, Any]]:
    """Per resource: growth over the post-warm-up span from its trend, its limit, and leak or not.

    Open files may grow by one lock file per session in play (a session holds its lock from
    its first save until it closes); a leak of one file per save or per turn exceeds that.
    """
    post = samples[len(samples) // 3 :]
    ts = [s["t"] for s in post]
    span = (ts[-1] - ts[0]) if len(ts) > 1 else 0.0
    limits = {  # what growth over the span counts as a leak (absolute, or of the mean)
        "rss_mb": lambda mean: max(24.0, 0.10 * mean),
        "open_files": lambda mean: 3.0 + sessions,
        "threads": lambda mean: 2.0,
        "swap_files": lambda mean: 3.0,
    }
    out = {}
    for key, limit in limits.items():
        ys = [s[key] for s in post]
        growth = trend(ts, ys) * span
        allowed = limit(statistics.fmean(ys) if ys else 0.0)
        out[key] = {
            "growth": round(growth, 3),
            "limit": round(allowed, 3),
            "leak": growth > allowed,
        }
    return out


class _Soak:
    """The driver: one engine at a time over one home folder."""

    def __init__(self, model: Any, cfg: SoakConfig, home: Path, swap_dir: Path) -> None:
        self.model, self.cfg, self.home, self.swap_dir = model, cfg, home, swap_dir
        self.rng = random.Random(cfg.seed)
        self.vocab = int(model.arch.vocab_size)
        self.tracks = [_Track(f"soak-{i}", seed=1000 + i) for i in range(cfg.sessions)]
        self.open: dict[str, Any] = {}
        self.saves: list[dict[str, Any]] = []
        self.events = {"turns": 0, "saves": 0, "closes": 0, "reopens": 0, "restarts": 0}
        self.eng = self._engine()

    def pool_blocks(self) -> int:
        """The pool size: the configured one, or room for ~2.5 sessions at their longest
        (undecimated), so that with more sessions in play idle ones are swapped out."""
        if self.cfg.num_blocks is not None:
            return self.cfg.num_blocks
        arch = self.model.arch
        streams = arch.num_layers * arch.num_kv_heads
        per_stream = -(-self.cfg.max_session_tokens // self.cfg.block_size) + 1
        return int(2.5 * streams * per_stream)

    def _engine(self, **kw: Any) -> Any:
        from agentrt.engine import Engine
        from agentrt.sessions.retention import CheckpointPolicy

        opts: dict[str, Any] = {
            "num_blocks": self.pool_blocks(),
            "block_size": self.cfg.block_size,
            "home": self.home,
            "db": f"sqlite:///{self.home / 'agentrt.db'}",
            "swap_dir": self.swap_dir,
            "checkpoints": CheckpointPolicy(keep=self.cfg.keep),
        }
        opts.update(kw)
        return Engine(self.model, **opts)

    def session(self, track: _Track) -> Any:
        """The track's open session: created, or reopened from its last save and checked."""
        s = self.open.get(track.name)
        if s is not None:
            return s
        if track.saved_tokens:
            s = self.eng.open_session(track.name)
            self.events["reopens"] += 1
            if list(s.tokens) != track.saved_tokens:
                raise AssertionError(f"{track.name} reopened with another history than saved")
        else:
            s = self.eng.new_session(track.name, seed=track.seed)
        track.turns = []
        self.open[track.name] = s
        return s

    def turn(self, track: _Track) -> None:
        """One turn: a prompt, sampled tokens; a save every `save_every` turns; maybe a close."""
        s = self.session(track)
        prompt = [self.rng.randrange(3, self.vocab) for _ in range(self.cfg.prompt_tokens)]
        s.prefill(prompt)
        list(s.generate(self.cfg.new_tokens, temperature=0.8, ignore_eos=True))
        track.turns.append((prompt, self.cfg.new_tokens))
        self.events["turns"] += 1
        if len(track.turns) >= self.cfg.save_every:
            t0 = time.perf_counter()
            row = self.eng.save(s)
            self.saves.append(
                {
                    "session": track.name,
                    "kind": row.kind,
                    "bytes": row.size_bytes,
                    "tokens": row.tokens,
                    "turns_in": len(track.saved_turns) + len(track.turns),
                    "seconds": time.perf_counter() - t0,
                }
            )
            self.events["saves"] += 1
            track.saved_turns += track.turns
            track.turns = []
            track.saved_tokens = list(s.tokens)
            retire = len(s.tokens) >= self.cfg.max_session_tokens
            if retire or self.rng.random() < self.cfg.close_prob:
                self.eng.close_session(s)
                del self.open[track.name]
                self.events["closes"] += 1
            if retire:
                track.retired = True
                n = len(self.tracks)
                self.tracks.append(_Track(f"soak-{n}", seed=1000 + n))

    def pick(self) -> _Track:
        """A random session that is still in play."""
        return self.rng.choice([t for t in self.tracks if not t.retired])

    def restart(self) -> None:
        """Drop the engine without saving: unsaved turns are lost, as after a crash."""
        self.eng.autosave = None
        self.eng.close()
        self.open.clear()
        for t in self.tracks:
            t.turns = []
        self.eng = self._engine()
        self.events["restarts"] += 1

    def sample(self, t0: float) -> dict[str, float]:
        """One sample of the resources the soak watches."""
        from agentrt.sessions.layout import SessionLayout

        layout = SessionLayout.under(self.home)
        disk, temps = _tree_bytes(layout.checkpoint_dir)
        full, counted, full_now = _newest_full_bytes(self.eng.persistence.store)
        complete = counted == self._saved_sessions()
        pool = self.eng.pool
        return {
            "t": time.monotonic() - t0,
            "rss_mb": _proc_status("VmRSS") / 1024,
            "open_files": _open_files(),
            "threads": max(_proc_status("Threads"), threading.active_count()),
            "pool_blocks": pool.num_blocks - pool.num_free,
            "swap_files": sum(1 for p in self.swap_dir.iterdir() if p.is_file())
            if self.swap_dir.is_dir()
            else 0,
            "disk_bytes": disk,
            "temp_files": temps,
            "newest_full_bytes": full,
            "disk_ratio": disk / full if full and complete else 0.0,
            "newest_state_full_bytes": full_now,
            "disk_ratio_newest_state": disk / full_now if full_now and complete else 0.0,
        }

    def _saved_sessions(self) -> int:
        return sum(1 for t in self.tracks if t.saved_tokens)


def _restore_timing(soak: _Soak, repeats: int = 3) -> dict[str, Any]:
    """Load time of each session's newest restore point (full + deltas) vs a full checkpoint of
    the same moment; both verified the same way."""
    from agentrt.sessions.chain import chain_of, load_chain
    from agentrt.sessions.checkpoint import load_checkpoint, save_checkpoint

    p = soak.eng.persistence
    rows_all = p.store.checkpoints()
    chain_t, full_t, links = [], [], []
    scratch = soak.home / "restore-timing"
    for track in soak.tracks:
        if not track.saved_tokens:
            continue
        sid = p.store.get_session(track.name).id
        rows = [c for c in rows_all if c.session_id == sid]
        if not rows or rows[-1].kind != "incremental":
            continue
        chain = chain_of(rows, rows[-1])
        loaded = load_chain(p.layout, rows, rows[-1], fingerprint=p.fingerprint)
        info = save_checkpoint(
            scratch / f"{track.name}.safetensors",
            loaded.state,
            token_ids=loaded.token_ids,
            fingerprint=p.fingerprint,
            extra=loaded.extra,
        )
        a, b = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            load_chain(p.layout, rows, rows[-1], fingerprint=p.fingerprint)
            a.append(time.perf_counter() - t)
            t = time.perf_counter()
            load_checkpoint(
                info.path,
                expected_sha256=info.sha256,
                expected_size=info.size_bytes,
                fingerprint=p.fingerprint,
            )
            b.append(time.perf_counter() - t)
        chain_t.append(min(a))
        full_t.append(min(b))
        links.append(len(chain))
    shutil.rmtree(scratch, ignore_errors=True)
    if not chain_t:
        return {"sessions": 0}
    ratio = sum(chain_t) / sum(full_t)
    return {
        "sessions": len(chain_t),
        "mean_links": statistics.fmean(links),
        "chain_seconds": sum(chain_t),
        "full_seconds": sum(full_t),
        "ratio": ratio,
    }


def _write_stats(saves: list[dict[str, Any]]) -> dict[str, Any]:
    """Bytes per save by kind, and whether a delta's size grows with the session's length."""
    deltas = [s for s in saves if s["kind"] == "incremental"]
    fulls = [s for s in saves if s["kind"] == "full"]
    out: dict[str, Any] = {"saves": len(saves), "deltas": len(deltas), "fulls": len(fulls)}
    if not deltas:
        return out
    last_full: dict[str, int] = {}
    ratios, long_ratios = [], []
    longest = max(s["tokens"] for s in saves)
    for s in saves:
        if s["kind"] == "full":
            last_full[s["session"]] = s["bytes"]
        elif s["session"] in last_full:
            ratios.append(s["bytes"] / last_full[s["session"]])
            if s["tokens"] >= longest / 2:
                long_ratios.append(s["bytes"] / last_full[s["session"]])
    half = max(t["tokens"] for t in deltas) / 2
    early = [d["bytes"] for d in deltas if d["tokens"] <= half]
    late = [d["bytes"] for d in deltas if d["tokens"] > half]
    slope = trend([d["tokens"] for d in deltas], [d["bytes"] for d in deltas])
    out.update(
        {
            "delta_bytes_median": statistics.median(d["bytes"] for d in deltas),
            "full_bytes_median": statistics.median(f["bytes"] for f in fulls) if fulls else 0,
            "delta_over_full_median": statistics.median(ratios) if ratios else None,
            "delta_over_full_max": max(ratios) if ratios else None,
            "delta_over_full_median_long_sessions": statistics.median(long_ratios)
            if long_ratios
            else None,
            "long_session_tokens": longest / 2,
            "delta_bytes_early_median": statistics.median(early) if early else None,
            "delta_bytes_late_median": statistics.median(late) if late else None,
            "delta_bytes_per_1k_tokens_slope": slope * 1000,
            "bytes_written_per_save": sum(s["bytes"] for s in saves) / len(saves),
        }
    )
    return out


def _replay(model: Any, soak: _Soak) -> list[str]:
    """Replay every saved history on an unlimited pool; the names whose tokens differ."""
    from agentrt.engine import Engine

    spec = soak.eng.pool.spec
    streams = spec.num_layers * spec.num_kv_heads
    bs = soak.cfg.block_size
    blocks = 64 + sum(streams * (len(t.saved_tokens) // bs + 2) for t in soak.tracks)
    eng = Engine(
        model,
        num_blocks=blocks,
        block_size=soak.cfg.block_size,
        home=soak.home / "replay",
        db=f"sqlite:///{soak.home / 'replay' / 'agentrt.db'}",
        autosave=None,
    )
    bad = []
    try:
        for t in soak.tracks:
            if not t.saved_tokens:
                continue
            s = eng.new_session(t.name, seed=t.seed)
            for prompt, n in t.saved_turns:
                s.prefill(prompt)
                list(s.generate(n, temperature=0.8, ignore_eos=True))
            if list(s.tokens) != t.saved_tokens:
                bad.append(t.name)
            eng.close_session(s)
    finally:
        eng.close()
    return bad


def run_soak(
    model: Any,
    cfg: SoakConfig,
    out: Path,
    *,
    progress: Callable[[float, dict[str, int]], None] | None = None,
) -> dict[str, Any]:
    """Run the soak for `cfg.minutes`; returns the result (see the module docstring)."""
    work = Path(tempfile.mkdtemp(prefix="soak-", dir=out))
    home, swap_dir = work / "home", work / "swap"
    swap_dir.mkdir(parents=True)
    soak = _Soak(model, cfg, home, swap_dir)
    samples: list[dict[str, float]] = []
    t0 = time.monotonic()
    end = t0 + cfg.minutes * 60
    restart_at = [t0 + cfg.minutes * 60 * (k + 1) / (cfg.restarts + 1) for k in range(cfg.restarts)]
    next_sample = t0
    while time.monotonic() < end or soak.events["turns"] < cfg.min_turns:
        soak.turn(soak.pick())
        now = time.monotonic()
        if restart_at and now >= restart_at[0]:
            restart_at.pop(0)
            soak.restart()
        if now >= next_sample:
            samples.append(soak.sample(t0))
            next_sample = now + max(0.5, cfg.minutes * 60 / 120)
            if progress is not None:
                progress((now - t0) / (cfg.minutes * 60), soak.events)
    samples.append(soak.sample(t0))
    # every session comes back as saved, in a fresh engine
    soak.restart()
    lost = []
    for t in soak.tracks:
        if t.saved_tokens:
            try:
                soak.session(t)
            except AssertionError:
                lost.append(t.name)
    restore = _restore_timing(soak)
    final = samples[-1]  # the end of the run, before every session was reopened for checks
    checked = soak.sample(t0)
    soak.eng.close()
    swap_left = sum(1 for p in swap_dir.iterdir()) if swap_dir.is_dir() else 0
    _, temp_left = _tree_bytes(home / "checkpoints")
    mismatched = _replay(model, soak) if cfg.replay else []
    leaks = leak_verdicts(samples, cfg.sessions)
    ratios = [s["disk_ratio"] for s in samples if s["disk_ratio"] > 0]
    now_ratios = [s["disk_ratio_newest_state"] for s in samples if s["disk_ratio_newest_state"]]
    result: dict[str, Any] = {
        "config": cfg.__dict__,
        "pool_blocks": soak.pool_blocks(),
        "model": str(model.source_dir or model.arch.model_type),
        "seconds": time.monotonic() - t0,
        "events": soak.events,
        "samples": samples,
        "after_checks": checked,
        "leaks": leaks,
        "disk": {
            "final_bytes": final["disk_bytes"],
            "final_newest_full_bytes": final["newest_full_bytes"],
            "final_ratio": final["disk_ratio"],
            "mean_ratio": statistics.fmean(ratios) if ratios else None,
            "max_ratio": max(ratios) if ratios else None,
            "final_ratio_newest_state": final["disk_ratio_newest_state"],
            "mean_ratio_newest_state": statistics.fmean(now_ratios) if now_ratios else None,
            "max_ratio_newest_state": max(now_ratios) if now_ratios else None,
        },
        "writes": _write_stats(soak.saves),
        "restore": restore,
        "lost_sessions": lost,
        "replay_mismatches": mismatched,
        "swap_files_left": swap_left,
        "temp_files_left": temp_left,
    }
    problems = [f"{k} leaks (+{v['growth']} > {v['limit']})" for k, v in leaks.items() if v["leak"]]
    problems += [f"session {n} came back different from its last save" for n in lost]
    problems += [f"replay of {n} on an unlimited pool gave other tokens" for n in mismatched]
    if swap_left:
        problems.append(f"{swap_left} swap files left after close")
    if temp_left:
        problems.append(f"{temp_left} temp files left in the checkpoint folder")
    result["problems"] = problems
    result["ok"] = not problems
    shutil.rmtree(work, ignore_errors=True)
    return result


@contextmanager
def progress_bar(minutes: float) -> Iterator[Callable[[float, dict[str, int]], None]]:
    """A rich progress bar over the soak's duration; yields the `progress` callback."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("soak"), BarColumn(), TextColumn("{task.description}"), TimeRemainingColumn()
    ) as bar:
        task = bar.add_task("", total=1.0)

        def tick(done: float, events: dict[str, int]) -> None:
            text = ", ".join(f"{v} {k}" for k, v in events.items())
            bar.update(task, completed=min(done, 1.0), description=text)

        yield tick


def plot(result: dict[str, Any], path: Path) -> None:
    """Resources over time (RSS, open files, threads, pool blocks, swap files, disk) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result["samples"]
    ts = [s["t"] / 60 for s in samples]
    panels = [
        ("rss_mb", "RSS (MiB)"),
        ("open_files", "open files"),
        ("threads", "threads"),
        ("pool_blocks", "pool blocks in use"),
        ("swap_files", "swap files"),
        ("disk_mib", "checkpoint disk (MiB)"),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    for ax, (key, title) in zip(axes.flat, panels, strict=True):
        if key == "disk_mib":
            ax.plot(ts, [s["disk_bytes"] / 2**20 for s in samples], label="on disk")
            ax.plot(ts, [s["newest_full_bytes"] / 2**20 for s in samples], label="newest fulls")
            ax.legend(fontsize=8)
        else:
            ax.plot(ts, [s[key] for s in samples])
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("minutes")
    cfg = result["config"]
    fig.suptitle(
        f"agentrt bench soak: {cfg['sessions']} sessions, {cfg['minutes']:g} min run "
        f"({result['seconds'] / 60:.1f} min with checks), "
        f"{result['pool_blocks']} blocks, {'OK' if result['ok'] else 'FAILED'}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def format_table(result: dict[str, Any]) -> str:
    """A short text summary of a soak result."""
    d, w, r = result["disk"], result["writes"], result["restore"]
    lines = [
        f"soak: {result['seconds']:.0f} s, events {result['events']}",
        f"disk held / newest full checkpoints: final {d['final_ratio']:.2f}x, "
        f"mean {d['mean_ratio'] or 0:.2f}x, max {d['max_ratio'] or 0:.2f}x",
        f"disk held / full checkpoints of the newest restore points (estimated by slots): "
        f"final {d['final_ratio_newest_state']:.2f}x, mean {d['mean_ratio_newest_state'] or 0:.2f}x"
        f", max {d['max_ratio_newest_state'] or 0:.2f}x",
    ]
    if w.get("deltas"):
        lines.append(
            f"saves: {w['fulls']} full (median {w['full_bytes_median']} B), {w['deltas']} delta "
            f"(median {w['delta_bytes_median']} B, {w['delta_over_full_median']:.3f} of the "
            f"session's full; {w['delta_over_full_median_long_sessions'] or 0:.3f} past "
            f"{w['long_session_tokens']:.0f} tokens); delta bytes early/late in a session: "
            f"{w['delta_bytes_early_median']}/{w['delta_bytes_late_median']}"
        )
    if r.get("sessions"):
        lines.append(
            f"restore full+deltas vs one full: {r['ratio']:.2f}x "
            f"({r['mean_links']:.1f} links, {r['sessions']} sessions)"
        )
    for key, v in result["leaks"].items():
        lines.append(
            f"{key}: growth {v['growth']} (limit {v['limit']}) {'LEAK' if v['leak'] else 'ok'}"
        )
    lines.append("OK" if result["ok"] else "FAILED: " + "; ".join(result["problems"]))
    return "\n".join(lines)


__all__ = [
    "SoakConfig",
    "format_table",
    "leak_verdicts",
    "plot",
    "run_soak",
    "tiny_model_dir",
    "trend",
]
