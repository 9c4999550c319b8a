"""Restore time of a checkpoint chain (full + deltas) vs one full checkpoint of the same moment.

    python -m agentrt.bench.chain_restore MODEL HISTORY_TOKENS TURNS

Prefills HISTORY_TOKENS random ids, saves (full), then runs TURNS turns (24 prompt ids, 16
sampled tokens) with a save after each (deltas), writes a full checkpoint of the final state
and times loading both, verified the same way (best of 5). Prints sizes and the ratio.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch


def main(argv: list[str]) -> None:
    """Run the measurement for MODEL HISTORY_TOKENS TURNS and print the result."""
    from agentrt import Engine
    from agentrt.sessions import load_chain, load_checkpoint, save_checkpoint
    from agentrt.sessions.chain import chain_of
    from agentrt.sessions.retention import CheckpointPolicy

    model, history, turns = argv[0], int(argv[1]), int(argv[2])
    home = Path(tempfile.mkdtemp(prefix="chain-restore-"))
    eng = Engine.from_pretrained(
        model,
        device="cpu",
        kv_budget="2GiB",
        home=home,
        db=f"sqlite:///{home}/agentrt.db",
        checkpoints=CheckpointPolicy(keep=None),
    )
    s = eng.new_session("chat", seed=1)
    gen = torch.Generator().manual_seed(0)
    vocab = eng.model.arch.vocab_size
    s.prefill(torch.randint(0, vocab, (history,), generator=gen).tolist())
    rows = [eng.save(s)]
    for _ in range(turns):
        s.prefill(torch.randint(0, vocab, (24,), generator=gen).tolist())
        list(s.generate(16, temperature=0.8))
        rows.append(eng.save(s))
    p = eng.persistence
    every = p.store.checkpoints(s.db_id)
    newest = every[-1]
    snap = p.snapshot(s)
    full = save_checkpoint(
        home / "full.safetensors",
        snap.state,
        token_ids=snap.token_ids,
        fingerprint=p.fingerprint,
        extra=snap.extra,
    )
    chain_t, full_t = [], []
    for _ in range(5):
        t0 = time.perf_counter()
        load_chain(p.layout, every, newest, fingerprint=p.fingerprint)
        chain_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        load_checkpoint(
            full.path,
            expected_sha256=full.sha256,
            expected_size=full.size_bytes,
            fingerprint=p.fingerprint,
        )
        full_t.append(time.perf_counter() - t0)
    chain = chain_of(every, newest)
    print(
        f"tokens {newest.tokens}, chain {[c.kind for c in chain]}, full checkpoint "
        f"{full.size_bytes} B, chain files {sum(c.size_bytes for c in chain)} B, one-turn delta "
        f"{rows[-1].size_bytes} B ({rows[-1].size_bytes / full.size_bytes:.3f} of full)"
    )
    print(
        f"restore chain {min(chain_t) * 1000:.1f} ms vs full {min(full_t) * 1000:.1f} ms: "
        f"{min(chain_t) / min(full_t):.2f}x"
    )
    eng.close()


if __name__ == "__main__":
    main(sys.argv[1:])
