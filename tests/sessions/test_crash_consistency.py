"""Crash consistency of the whole save path (blob, session row, checkpoint row) under SIGKILL.

Worker processes (children forked by tests/sessions/save_worker.py) create and save
sessions in a loop on one shared catalog, several at once; each is SIGKILLed at a random
moment after its first completed save. Afterwards every session row has a
checkpoint, every restore point verifies (size, SHA-256, header digest of each link of its
chain of deltas), every save a worker
reported as done is in the catalog, and `gc` leaves all of that intact. The default run
kills 20 workers (CI); the `slow` variant kills 100.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from agentrt.sessions import SessionStore, load_chain, open_catalog
from agentrt.sessions.gc import collect_files, mark_missing
from agentrt.sessions.layout import SessionLayout
from tests.dms.serving_helpers import tiny_model

ROOT = Path(__file__).resolve().parents[2]
PARALLEL = 4  # workers killed per round


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny DMS model saved as an HF folder."""
    path = tmp_path_factory.mktemp("model")
    tiny_model(window=3, offset=5.0).save_pretrained(path)
    return path


def start_server(model_dir: Path, home: Path) -> subprocess.Popen:
    """The fork server of tests/sessions/save_worker.py on `home`'s catalog."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    db = f"sqlite:///{home / 'agentrt.db'}"
    home.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.sessions.save_worker", str(model_dir), str(home), db],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    line = proc.stdout.readline()
    assert line.strip() == "ready", (line, proc.stderr.read()[-3000:])
    return proc


def fork_child(server: subprocess.Popen, prefix: str) -> int:
    """Start one saving child; returns its pid."""
    server.stdin.write(prefix + "\n")
    server.stdin.flush()
    pid, echoed = server.stdout.readline().split()
    assert echoed == prefix
    return int(pid)


def wait_for_first_save(log: Path, pid: int, timeout: float = 120.0, saves: int = 1) -> None:
    """Until the child logged `saves` completed saves (its model loaded, the catalog migrated)."""
    deadline = time.monotonic() + timeout
    while not (log.is_file() and log.read_text().count("saved ") >= saves):
        assert time.monotonic() < deadline, f"child {pid} saved nothing in {timeout} s"
        os.kill(pid, 0)  # raises if the child died on its own
        time.sleep(0.02)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def kill_workers(
    model_dir: Path, home: Path, kills: int, seed: int, *, kind: str = "w", saves: int = 1
) -> dict[str, set[int]]:
    """SIGKILL `kills` saving children (`kind` w: many sessions, chain: one growing session)
    at random moments after `saves` completed saves; returns the saves they logged."""
    rng = random.Random(seed)
    server = start_server(model_dir, home)
    try:
        for first in range(0, kills, PARALLEL):
            prefixes = [f"{kind}{k}" for k in range(first, min(kills, first + PARALLEL))]
            pids = [fork_child(server, p) for p in prefixes]
            for prefix, pid in zip(prefixes, pids, strict=True):
                wait_for_first_save(home / f"{prefix}.log", pid, saves=saves)
            for pid in pids:  # each dies somewhere in its loop of saves (~10-50 ms each)
                time.sleep(rng.uniform(0.0, 0.3))
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while not all(gone(pid) for pid in pids):
                assert time.monotonic() < deadline, "a killed child did not go away"
                time.sleep(0.02)
    finally:
        server.stdin.close()
        server.wait(timeout=30)
    done: dict[str, set[int]] = defaultdict(set)
    for log in home.glob(f"{kind}*.log"):
        for line in log.read_text().splitlines():
            record(done, line)
    return done


def record(done: dict[str, set[int]], line: str) -> None:
    """Note one `saved NAME TOKENS` line."""
    _, name, tokens = line.split()
    done[name].add(int(tokens))


def check_catalog(store: SessionStore, layout: SessionLayout, done: dict[str, set[int]]) -> int:
    """Assert no corrupt and no lost checkpoint; returns how many checkpoints verified."""
    by_name = {s.name: s for s in store.list_sessions()}
    verified = 0
    for info in by_name.values():
        rows = store.checkpoints(info)
        assert rows, f"session {info.name!r} has a row but no checkpoint"
        for c in rows:  # every restore point: a full checkpoint, or one with its chain
            assert not c.missing
            loaded = load_chain(layout, rows, c)
            assert loaded.next_pos == c.tokens
            verified += 1
    for name, tokens in done.items():
        assert name in by_name, f"a completed save of {name!r} was lost"
        saved = {c.tokens for c in store.checkpoints(name)}
        assert tokens <= saved, f"completed saves {tokens - saved} of {name!r} were lost"
    return verified


def run(model_dir: Path, home: Path, kills: int, seed: int) -> None:
    done = kill_workers(model_dir, home, kills, seed)
    assert sum(len(t) for t in done.values()) > 0, "no worker completed any save"
    layout = SessionLayout.under(home)
    store = SessionStore(open_catalog(f"sqlite:///{home / 'agentrt.db'}"))
    try:
        before = check_catalog(store, layout, done)
        said: list[str] = []
        mark_missing(store, layout, verify=True, dry_run=False, say=lambda k, t, _: said.append(k))
        collect_files(
            store, layout, dry_run=False, say=lambda k, t, _: said.append(k), size_text=str
        )
        assert "marked" not in said and "kept" not in said, said
        assert check_catalog(store, layout, done) == before
    finally:
        store.close()


def test_sigkill_during_saves_loses_and_corrupts_nothing(model_dir: Path, tmp_path: Path) -> None:
    run(model_dir, tmp_path / "home", kills=20, seed=1)


@pytest.mark.slow
def test_sigkill_during_saves_at_scale(model_dir: Path, tmp_path: Path) -> None:
    run(model_dir, tmp_path / "home", kills=100, seed=2)
