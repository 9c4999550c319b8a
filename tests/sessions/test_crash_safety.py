"""Crash safety: a writer SIGKILLed anywhere in a save never leaves a bad file under a final name."""

from __future__ import annotations

import hashlib
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from agentrt.dms.cache_spec import CacheSpec
from agentrt.dms.kv_pool import KEEP_FOREVER, KVPool
from agentrt.dms.session_cache import SessionCache
from agentrt.errors import CheckpointError
from agentrt.sessions import Fingerprint, load_checkpoint, save_checkpoint
from agentrt.sessions.atomic import (
    TEMP_PREFIX,
    HashingWriter,
    ensure_private_dir,
    stale_temp_files,
    write_atomic,
    write_bytes_atomic,
)

REPO = Path(__file__).resolve().parents[2]
FINGERPRINT = Fingerprint(parts={"weights": "w" * 64, "dtype": "float32"})
SLOTS_PER_STREAM = 4000  # 4 streams x 4000 slots x 520 bytes ≈ 8 MB per checkpoint


def synthetic_cache(slots: int = SLOTS_PER_STREAM, seed: int = 0) -> SessionCache:
    """A 2-layer, 2-head cache (head_dim 64, w = 3) whose streams each hold `slots` random slots."""
    spec = CacheSpec(2, 2, head_dim=64, block_size=64, dtype=torch.float32, window=3)
    per_stream = -(-slots // spec.block_size)
    pool = KVPool(spec, 4 * per_stream)
    gen = torch.Generator().manual_seed(seed)
    pool.kv.copy_(torch.randn(pool.kv.shape, generator=gen))
    cache = SessionCache(pool, 2, 2, window=3)
    for layer in range(2):
        for head in range(2):
            cache.blocks[layer][head] = pool.allocate(per_stream)
            cache.lens[layer][head] = slots
            idx = torch.arange(slots)
            table = torch.tensor(cache.blocks[layer][head])
            flat = table[idx // spec.block_size] * spec.block_size + idx % spec.block_size
            pool.pos_flat[flat] = idx.to(torch.int32)
            pool.expiry_flat[flat] = KEEP_FOREVER
    for p in range(slots - 4, slots):
        cache.ring_slot[:, :, p % 4] = p
    cache.next_pos = slots
    return cache


def save(path: Path, cache: SessionCache, iteration: int):
    """One checkpoint whose token ids record which save wrote it."""
    return save_checkpoint(
        path,
        cache,
        token_ids=[iteration],
        fingerprint=FINGERPRINT,
        metadata={"iteration": str(iteration)},
    )


WRITER = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from agentrt.sessions import atomic
from tests.sessions.test_crash_safety import save, synthetic_cache

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

def inject(mode):
    real_write = atomic.HashingWriter.write
    def half_written(self, data):
        n = real_write(self, data)
        if self.size > 2_000_000:  # about a quarter of the file
            self.raw.flush()
            die()
        return n
    if mode == "mid-write":
        atomic.HashingWriter.write = half_written
    elif mode == "before-rename":
        os.replace = die
    elif mode == "after-rename":
        atomic.fsync_dir = die

jobs = list(zip(sys.argv[2::2], sys.argv[3::2]))  # (folder, mode) pairs
if jobs[0][1] == "loop":  # save forever until the test SIGKILLs this process
    cache = synthetic_cache()
    print("ready", flush=True)
    i, folder = 0, Path(jobs[0][0])
    while True:
        save(folder / "latest.safetensors", cache, i)
        save(folder / f"ckpt-{i % 3}.safetensors", cache, i)
        print(i, flush=True)
        i += 1
# One fork per fault (cheaper than a process each): no torch op ran here yet, so fork is safe.
for folder, mode in jobs:
    pid = os.fork()
    if pid == 0:
        inject(mode)
        save(Path(folder) / "latest.safetensors", synthetic_cache(), 0)
        os._exit(3)
    _, status = os.waitpid(pid, 0)
    print(mode, os.WTERMSIG(status) if os.WIFSIGNALED(status) else -1, flush=True)
"""


def _start_writer(*jobs: tuple[Path, str]) -> subprocess.Popen:
    args = [str(x) for job in jobs for x in job]
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(REPO), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_ready(proc: subprocess.Popen) -> None:
    line = proc.stdout.readline()
    assert line.strip() == "ready", (line, proc.stderr.read()[-3000:])


def _assert_every_final_file_verifies(folder: Path) -> dict[str, int]:
    """Load every non-temp file fully verified; returns name → iteration that wrote it."""
    found = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(TEMP_PREFIX):
            continue
        loaded = load_checkpoint(path, fingerprint=FINGERPRINT)  # content digest checked
        assert loaded.metadata["iteration"] == str(loaded.token_ids[0]), path
        found[path.name] = loaded.token_ids[0]
    return found


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The synthetic cache and the folder template holding a valid previous checkpoint."""
    return synthetic_cache()


def _prepared(tmp_path: Path, name: str, cache: SessionCache, *, keep_previous: bool = False):
    """A folder with `latest.safetensors` (iteration −1) and, optionally, `previous.safetensors`."""
    folder = tmp_path / name
    previous = save(folder / "previous.safetensors", cache, -1) if keep_previous else None
    latest = save(folder / "latest.safetensors", cache, -1)
    return folder, previous or latest


@pytest.mark.slow
def test_killed_at_each_phase_keeps_the_previous_checkpoint(base, tmp_path: Path) -> None:
    modes = ["mid-write", "before-rename", "after-rename"]
    prepared = {m: _prepared(tmp_path, m, base) for m in modes}
    proc = _start_writer(*((prepared[m][0], m) for m in modes))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert out.split() == [x for m in modes for x in (m, str(int(signal.SIGKILL)))], err[-3000:]
    for mode in modes:
        folder, previous = prepared[mode]
        found = _assert_every_final_file_verifies(folder)
        temps = list(stale_temp_files(folder))
        if mode == "after-rename":
            assert found == {"latest.safetensors": 0} and temps == []
        else:
            assert found == {"latest.safetensors": -1}, mode
            assert len(temps) == 1 and temps[0].stat().st_mode & 0o777 == 0o600
            latest = load_checkpoint(
                folder / "latest.safetensors",
                expected_sha256=previous.sha256,
                expected_size=previous.size_bytes,
            )
            assert latest.token_ids == [-1]
            with pytest.raises(CheckpointError):
                load_checkpoint(temps[0], expected_sha256=previous.sha256)


@pytest.mark.slow
def test_sigkill_at_random_points_never_leaves_a_half_file(base, tmp_path: Path) -> None:
    rng = random.Random(8)
    rounds = [_prepared(tmp_path, f"round{r}", base, keep_previous=True) for r in range(2)]
    procs = [_start_writer((folder, "loop")) for folder, _ in rounds]
    for proc in procs:
        _wait_ready(proc)
    start = time.monotonic()
    for proc in procs:  # each writer dies somewhere in its loop of saves (~60 ms each)
        time.sleep(max(0.0, start + rng.uniform(0.0, 0.8) - time.monotonic()))
        proc.send_signal(signal.SIGKILL)
    for proc in procs:
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-3000:]
    for folder, previous in rounds:
        found = _assert_every_final_file_verifies(folder)
        assert found["previous.safetensors"] == -1 and "latest.safetensors" in found
        assert len(list(stale_temp_files(folder))) <= 1
        kept = load_checkpoint(
            folder / "previous.safetensors",
            expected_sha256=previous.sha256,
            expected_size=previous.size_bytes,
        )
        assert kept.token_ids == [-1]


# -- atomic writing, in process ----------------------------------------------------------


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    first = write_bytes_atomic(target, b"old content")
    assert first.sha256 == hashlib.sha256(b"old content").hexdigest() and first.size_bytes == 11

    def broken(sink: HashingWriter) -> None:
        sink.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, broken)
    assert target.read_bytes() == b"old content"
    assert list(stale_temp_files(tmp_path)) == []


def test_private_modes_for_created_folders_and_files(tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir(mode=0o755)
    (tmp_path / "shared").chmod(0o755)
    written = write_bytes_atomic(tmp_path / "shared" / "a" / "b" / "f.bin", b"x")
    assert written.path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "shared" / "a").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "shared" / "a" / "b").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "shared").stat().st_mode & 0o777 == 0o755  # existing: untouched
    assert ensure_private_dir(tmp_path / "shared" / "a") == tmp_path / "shared" / "a"


def test_temp_names_are_refused_as_checkpoint_names(base, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must not start with"):
        save(tmp_path / f"{TEMP_PREFIX}x.safetensors", base, 0)
