"""Restore time of a checkpoint chain (full + deltas) vs one full checkpoint of the same moment.

    python -m agentrt.bench.chain_restore MODEL HISTORY_TOKENS TURNS [REPEATS]

Two engines in two homes do the same work (one torch thread, same seeds, so the same
tokens and KV): prefill HISTORY_TOKENS random ids and save, then TURNS turns (24 prompt ids,
16 sampled tokens) with a save after each (timed). The first home chains its saves (a full
checkpoint, then deltas); the second writes every save full. Timed, alternating between the
two and best of REPEATS (default 5): reading and verifying the newest restore point
(`load_chain` / `load_checkpoint`), and `Engine.open_session` in a fresh engine, which also
unpacks the cache into the KV pool (what a user waits for). Prints sizes and ratios.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch


def _build(model: str, home: Path, policy, history: int, turns: int):
    """An engine in `home` that ran the workload with checkpoint `policy`; (engine, rows)."""
    from agentrt import Engine

    eng = Engine.from_pretrained(
        model,
        device="cpu",
        kv_budget="2GiB",
        home=home,
        db=f"sqlite:///{home}/agentrt.db",
        checkpoints=policy,
    )
    s = eng.new_session("chat", seed=1)
    gen = torch.Generator().manual_seed(0)
    vocab = eng.model.arch.vocab_size
    s.prefill(torch.randint(0, vocab, (history,), generator=gen).tolist())
    t0 = time.perf_counter()
    rows = [eng.save(s)]
    took = [time.perf_counter() - t0]
    for _ in range(turns):
        s.prefill(torch.randint(0, vocab, (24,), generator=gen).tolist())
        list(s.generate(16, temperature=0.8))
        t0 = time.perf_counter()
        rows.append(eng.save(s))
        took.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    eng.persistence.snapshot(s, full=True)
    took.append(time.perf_counter() - t0)  # packing alone (under the engine lock in a save)
    s.close()
    return eng, rows, took


def main(argv: list[str]) -> None:
    """Run the measurement for MODEL HISTORY_TOKENS TURNS [REPEATS] and print the result."""
    from agentrt import Engine
    from agentrt.sessions import load_chain, load_checkpoint
    from agentrt.sessions.chain import chain_of
    from agentrt.sessions.retention import CheckpointPolicy

    torch.set_num_threads(1)
    model, history, turns = argv[0], int(argv[1]), int(argv[2])
    repeats = int(argv[3]) if len(argv) > 3 else 5
    root = Path(tempfile.mkdtemp(prefix="chain-restore-"))
    homes = {"chain": root / "chain", "full": root / "full"}
    policies = {
        "chain": CheckpointPolicy(keep=None, max_deltas=64, chain_ratio=10.0),
        "full": CheckpointPolicy(keep=None, max_deltas=0),
    }
    built = {k: _build(model, homes[k], policies[k], history, turns) for k in homes}
    rows = {k: built[k][1] for k in homes}
    saves = {k: built[k][2] for k in homes}
    every = {k: built[k][0].persistence.store.checkpoints("chat") for k in homes}
    assert [r.tokens for r in rows["chain"]] == [r.tokens for r in rows["full"]]
    fp = built["chain"][0].persistence.fingerprint
    layout = {k: built[k][0].persistence.layout for k in homes}
    for eng, _, _ in built.values():
        eng.close()

    def read(kind: str) -> None:
        if kind == "chain":
            load_chain(layout[kind], every[kind], every[kind][-1], fingerprint=fp)
        else:
            row = every[kind][-1]
            load_checkpoint(
                layout[kind].resolve(row.file),
                expected_sha256=row.sha256,
                expected_size=row.size_bytes,
                fingerprint=fp,
            )

    def reopen(kind: str) -> float:
        eng = Engine.from_pretrained(
            model,
            device="cpu",
            kv_budget="2GiB",
            home=homes[kind],
            db=f"sqlite:///{homes[kind]}/agentrt.db",
        )
        try:
            t0 = time.perf_counter()
            s = eng.open_session("chat")
            took = time.perf_counter() - t0
            assert len(s.tokens) == rows[kind][-1].tokens
            return took
        finally:
            eng.close()

    times: dict[str, dict[str, list[float]]] = {"read": {}, "open": {}}
    for _ in range(repeats):
        for kind in ("chain", "full"):
            t0 = time.perf_counter()
            read(kind)
            times["read"].setdefault(kind, []).append(time.perf_counter() - t0)
            times["open"].setdefault(kind, []).append(reopen(kind))
    chain = chain_of(every["chain"], every["chain"][-1])
    full_row = every["full"][-1]
    print(
        f"tokens {full_row.tokens}; chain {len(chain)} links ({chain[0].kind} + "
        f"{len(chain) - 1} deltas); full checkpoint {full_row.size_bytes} B; chain files "
        f"{sum(c.size_bytes for c in chain)} B; one-turn delta {rows['chain'][-1].size_bytes} B "
        f"({rows['chain'][-1].size_bytes / full_row.size_bytes:.3f} of full)"
    )
    ch, fu = saves["chain"], saves["full"]
    print(
        f"save: one-turn delta {min(ch[1:-1]) * 1000:.1f} ms (median of {len(ch) - 2}: "
        f"{sorted(ch[1:-1])[(len(ch) - 2) // 2] * 1000:.1f}) vs full {min(fu[1:-1]) * 1000:.1f} ms; "
        f"packing the session alone {ch[-1] * 1000:.1f} ms"
    )
    for what, label in (("read", "read + verify"), ("open", "open_session into the pool")):
        c, f = min(times[what]["chain"]), min(times[what]["full"])
        print(f"{label}: chain {c * 1000:.1f} ms vs full {f * 1000:.1f} ms: {c / f:.2f}x")


if __name__ == "__main__":
    main(sys.argv[1:])
