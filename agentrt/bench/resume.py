"""Resume suite: bring back a saved session (new process, new engine, pinned CPU) vs re-prefill."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from typing import Any

from agentrt.bench.method import Case, Sample, interleaved, paired_ratio, summarize, timed
from agentrt.bench.report import bar_plot, fmt_spread, md_table
from agentrt.bench.workload import BenchModels, text_ids
from agentrt.errors import CheckpointError


class ResumeBench:
    """One saved session of `tokens` tokens and the ways to get it back."""

    def __init__(
        self, models: BenchModels, tokens: int, kv_budget: str, kv_dtype: str | None = None
    ) -> None:
        self.models, self.model = models, models.served
        self.kv_budget, self.tokens = kv_budget, tokens
        self.kv_dtype = kv_dtype
        self._home = tempfile.TemporaryDirectory(prefix="agentrt-bench-resume-")
        self.home = self._home.name
        self.engine = self._engine()
        self.ids = text_ids(self.model, tokens)
        s = self.engine.new_session(name="resume")
        s.prefill(self.ids)
        self.save_seconds, info = timed(self.model.device, lambda: self.engine.save(s))
        self.checkpoint_bytes = info.size_bytes
        st = s.stats()
        self.kv_bytes, self.compression = st["kv_bytes"], st["compression_ratio"]
        self.engine.close_session(s)

    def _engine(self) -> Any:
        from agentrt.engine import Engine

        db = f"sqlite:///{self.home}/b.db"
        return Engine(
            self.model, kv_budget=self.kv_budget, kv_dtype=self.kv_dtype, home=self.home, db=db
        )

    def from_disk(self) -> Sample:
        """A new engine (same process) opens the session from its checkpoint."""
        eng = self._engine()
        seconds, s = timed(self.model.device, lambda: eng.open_session("resume"))
        assert len(s.tokens) == self.tokens, (len(s.tokens), self.tokens)
        eng.close()
        return Sample(seconds)

    def from_cpu(self) -> Sample:
        """Swap the open session out to (pinned on GPU) CPU memory, then time the swap-in."""
        s = self.engine.open_session("resume")
        self.engine.swap.swap_out(s)
        seconds, _ = timed(self.model.device, lambda: self.engine.swap.swap_in(s))
        self.engine.close_session(s)
        return Sample(seconds)

    def reprefill(self) -> Sample:
        """Prefill the same tokens into a new session."""
        s = self.engine.new_session()
        seconds, _ = timed(self.model.device, lambda: s.prefill(self.ids))
        self.engine.close_session(s)
        return Sample(seconds, self.tokens)

    def new_process(self) -> Sample:
        """A fresh process loads the model as the CLI does, then its first open_session is timed."""
        return self._child(prefetch=True)

    def new_process_cold(self) -> Sample:
        """The same, without importing the catalog during the load: the open pays that too."""
        return self._child(prefetch=False)

    def _child(self, *, prefetch: bool) -> Sample:
        args = {
            "path": self.models.path,
            "adapters": str(self.models.adapters) if self.models.adapters else "",
            "dms": "on" if self.models.dms is not None else "off",
            "device": str(self.model.device),
            "home": self.home,
            "name": "resume",
            "kv_budget": self.kv_budget,
            "kv_dtype": self.kv_dtype,
            "prefetch": prefetch,
        }
        cmd = [sys.executable, "-m", "agentrt.bench.resume_child", json.dumps(args)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=1800)
        if done.returncode != 0:
            raise CheckpointError(
                f"the resume child process failed: {done.stderr[-2000:]}",
                hint="run `agentrt bench resume --no-new-process` to measure in this process only",
            )
        out = json.loads(done.stdout.strip().splitlines()[-1])
        assert out["tokens"] == self.tokens, out
        return Sample(out["open_seconds"])

    def close(self) -> None:
        """Free the engine and the checkpoint folder."""
        self.engine.close()
        self._home.cleanup()


def run_resume(
    models: BenchModels,
    *,
    lengths: tuple[int, ...],
    repeats: int,
    warmup: int = 1,
    kv_budget: str = "1GiB",
    kv_dtype: str | None = None,  # K/V storage dtype; None: AGENTRT_KV_DTYPE, else auto
    new_process: bool = True,
    progress: Any = None,
) -> dict[str, Any]:
    """Seconds to get a session of each length back, per route, and the paired speedups."""
    rows = []
    for n in lengths:
        bench = ResumeBench(models, n, kv_budget, kv_dtype)
        try:
            cases = [
                Case("re-prefill", bench.reprefill),
                Case("disk, new engine", bench.from_disk),
                Case("CPU memory", bench.from_cpu),
            ]
            if new_process and models.path is not None:
                cases.append(Case("disk, new process", bench.new_process))
                cases.append(Case("disk, new process, catalog cold", bench.new_process_cold))
            samples = interleaved(
                cases,
                repeats=repeats,
                warmup=warmup,
                progress=progress and (lambda msg, n=n: progress(f"resume {n}: {msg}")),
            )
            row: dict[str, Any] = {
                "tokens": n,
                "checkpoint_bytes": bench.checkpoint_bytes,
                "kv_bytes": bench.kv_bytes,
                "compression_ratio": bench.compression,
                "save_seconds": bench.save_seconds,
                "variants": {name: summarize(s) for name, s in samples.items()},
                "speedup_vs_reprefill": {
                    name: paired_ratio(s, samples["re-prefill"], rate=False)
                    for name, s in samples.items()
                    if name != "re-prefill"
                },
            }
            rows.append(row)
        finally:
            bench.close()
    return {"suite": "resume", "rows": rows, "repeats": repeats, "warmup": warmup}


def resume_table(result: dict[str, Any]) -> str:
    """Markdown: seconds per route, speedups vs re-prefill, checkpoint bytes and save time."""
    names = list(result["rows"][0]["variants"])
    routes = list(result["rows"][0]["speedup_vs_reprefill"])
    headers = ["tokens", *[f"{n} s" for n in names], *[f"{n} speedup" for n in routes]]
    headers += ["checkpoint MB", "save s"]
    body = []
    for row in result["rows"]:
        cells = [str(row["tokens"])]
        cells += [fmt_spread(row["variants"][n]["seconds"], 3) for n in names]
        cells += [fmt_spread(row["speedup_vs_reprefill"][n], 0) + "x" for n in routes]
        cells += [f"{row['checkpoint_bytes'] / 1e6:.1f}", f"{row['save_seconds']:.2f}"]
        body.append(cells)
    return md_table(headers, body)


def resume_plot(result: dict[str, Any], path: Any) -> Any:
    """Bars (log scale) of seconds per route and session length."""
    names = list(result["rows"][0]["variants"])
    return bar_plot(
        path,
        title="time to get a session back",
        ylabel="seconds (log)",
        groups=[f"{r['tokens']} tokens" for r in result["rows"]],
        series={n: [r["variants"][n]["seconds"] for r in result["rows"]] for n in names},
        log=True,
    )
