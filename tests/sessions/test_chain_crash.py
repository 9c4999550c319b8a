"""SIGKILL while a session saves deltas and prunes old restore points after every save.

Chain workers (tests/sessions/save_worker.py, `chain` prefixes) grow one session each, save
it after every turn (deltas, a full checkpoint every few saves, retention keeping 2 restore
points) and are SIGKILLed at random moments, so kills land inside delta writes, catalog
commits and pruning. Afterwards every session reopens from its newest restore point with at
least every save its worker completed, its tokens are exactly the worker's script, and its
KV equals a fresh computation of the same tokens (torch.equal); `gc` finds nothing broken.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from agentrt import Engine
from agentrt.sessions import SessionStore, open_catalog
from agentrt.sessions.gc import collect_files, mark_missing
from agentrt.sessions.layout import SessionLayout
from tests.sessions.save_worker import CHAIN_PROMPT, chain_turn
from tests.sessions.test_crash_consistency import check_catalog, kill_workers, model_dir  # noqa: F401


def script(tokens: int) -> list[list[int]]:
    """The chunks a chain worker fed to reach `tokens` tokens."""
    chunks, n, t = [CHAIN_PROMPT], len(CHAIN_PROMPT), 0
    while n < tokens:
        chunks.append(chain_turn(t))
        n += len(chunks[-1])
        t += 1
    assert n == tokens, f"{tokens} tokens is not a turn boundary of the script"
    return chunks


def run(model_dir: Path, home: Path, kills: int, seed: int) -> None:  # noqa: F811
    done = kill_workers(model_dir, home, kills, seed, kind="chain", saves=4)
    layout = SessionLayout.under(home)
    db = f"sqlite:///{home / 'agentrt.db'}"
    store = SessionStore(open_catalog(db))
    try:
        check_catalog(store, layout, {})  # every kept restore point loads, link by link
        kinds = {c.kind for c in store.checkpoints()}
        assert kinds == {"full", "incremental"}, kinds
        for info in store.list_sessions():
            # pruned: a new full + the newest delta of the previous chain (its full and 4
            # deltas), + 1 for a kill between a save's commit and its pruning
            assert len(store.checkpoints(info)) <= 1 + 5 + 1
        said: list[str] = []
        mark_missing(store, layout, verify=True, dry_run=False, say=lambda k, t, _: said.append(k))
        collect_files(
            store, layout, dry_run=False, say=lambda k, t, _: said.append(k), size_text=str
        )
        assert "marked" not in said and "kept" not in said, said
    finally:
        store.close()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' setting (save_worker.py): bitwise-equal KV
    eng = Engine.from_pretrained(
        model_dir, device="cpu", num_blocks=2000, block_size=4, home=home, db=db
    )
    ref = Engine.from_pretrained(
        model_dir, device="cpu", num_blocks=2000, block_size=4, home=home / "ref", db=db + "-ref"
    )
    try:
        for name, tokens in done.items():
            s = eng.open_session(name)
            assert len(s.tokens) >= max(tokens), f"{name}: a completed save was lost"
            r = ref.new_session(name, seed=1)
            for chunk in script(len(s.tokens)):
                r.prefill(chunk)  # on one thread, as the workers: CPU SDPA sums differ by threads
            assert s.tokens == r.tokens
            mine, theirs = s.cache.state_dict(), r.cache.state_dict()
            assert mine.keys() == theirs.keys()
            for key in mine:
                assert torch.equal(mine[key], theirs[key]), f"{name}: {key} differs"
            eng.close_session(s)
            ref.close_session(r)
    finally:
        eng.close()
        ref.close()
        torch.set_num_threads(threads)


def test_sigkill_during_delta_saves_and_pruning(model_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    run(model_dir, tmp_path / "home", kills=8, seed=3)


@pytest.mark.slow
def test_sigkill_during_delta_saves_at_scale(model_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    run(model_dir, tmp_path / "home", kills=40, seed=4)
