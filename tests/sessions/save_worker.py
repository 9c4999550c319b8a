"""Subprocess side of the crash-consistency test: a fork server whose children save sessions
in a loop until the test SIGKILLs them.

Usage: python -m tests.sessions.save_worker MODEL_DIR HOME DB_URL
It loads the model once (torch on one thread, so forking after it is safe), prints `ready`,
then for each line
PREFIX on stdin forks a child and prints `PID PREFIX`. The child opens an engine, creates
sessions PREFIX-0, PREFIX-1, ... and saves each three times; after each save returned it
appends `saved NAME TOKENS` to HOME/PREFIX.log, so the test knows which saves completed.
A PREFIX starting with `chain` instead grows one session PREFIX by `chain_turn(t)` and saves
it after every turn (deltas, a full one every few saves, retention pruning after each).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import torch

from agentrt import Engine


def save_forever(model: Any, home: str, db: str, prefix: str) -> None:
    """The child: create and save sessions until killed."""
    eng = Engine(model, num_blocks=400, block_size=4, home=home, db=db)
    with open(os.path.join(home, f"{prefix}.log"), "a", buffering=1) as log:
        n = 0
        while True:
            s = eng.new_session(f"{prefix}-{n}", seed=n)
            s.prefill(list(range(3, 40)))
            for turn in range(3):
                if turn:
                    s.prefill([10 + turn, 11 + turn])
                row = eng.save(s)
                log.write(f"saved {s.name} {row.tokens}\n")
            eng.close_session(s)
            n += 1


CHAIN_PROMPT = list(range(3, 40))


def chain_turn(t: int) -> list[int]:
    """The ids fed in turn t of a chain worker's session (deterministic)."""
    return [10 + t % 50, 11 + (3 * t) % 60]


def save_chain_forever(model: Any, home: str, db: str, prefix: str) -> None:
    """The chain child: one session, a turn and a save at a time, until killed."""
    from agentrt.sessions.retention import CheckpointPolicy

    policy = CheckpointPolicy(keep=2, max_deltas=4, chain_ratio=10.0)
    eng = Engine(model, num_blocks=400, block_size=4, home=home, db=db, checkpoints=policy)
    with open(os.path.join(home, f"{prefix}.log"), "a", buffering=1) as log:
        s = eng.new_session(prefix, seed=1)
        s.prefill(CHAIN_PROMPT)
        t = 0
        while True:
            row = eng.save(s)
            log.write(f"saved {s.name} {row.tokens}\n")
            s.prefill(chain_turn(t))
            t += 1


def main() -> None:
    """Fork one saving child per PREFIX line read from stdin."""
    from agentrt.models.resolve import load_resolved

    model_dir, home, db = sys.argv[1:4]
    torch.set_num_threads(1)  # no thread pool in the parent: its children fork cleanly
    model = load_resolved(model_dir, device=torch.device("cpu"), progress=False)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped automatically
    print("ready", flush=True)
    for line in sys.stdin:
        prefix = line.strip()
        pid = os.fork()
        if pid == 0:
            try:
                if prefix.startswith("chain"):
                    save_chain_forever(model, home, db, prefix)
                else:
                    save_forever(model, home, db, prefix)
            finally:
                os._exit(3)
        print(pid, prefix, flush=True)


if __name__ == "__main__":
    main()
