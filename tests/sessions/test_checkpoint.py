"""Checkpoint blobs: exact resume (any block size, a new process), verification on load, size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from agentrt.dms.cache_spec import CacheSpec
from agentrt.dms.kv_pool import KVPool
from agentrt.dms.serving import StepItem
from agentrt.dms.session_cache import SessionCache
from agentrt.errors import BudgetError, CheckpointError
from agentrt.sessions import (
    FORMAT_VERSION,
    FULL_VERSION,
    load_checkpoint,
    model_fingerprint,
    save_checkpoint,
)
from tests.dms.serving_helpers import poisoned_pool, run_chunks, tiny_model
from tests.sessions.test_fingerprint import tiny_tokenizer

REPO = Path(__file__).resolve().parents[2]
PREFIX, TAIL = 34, 10  # tokens before the save (prefill + decode) and after it


def _ids(n: int, seed: int = 3) -> torch.Tensor:
    return torch.randint(0, 97, (n,), generator=torch.Generator().manual_seed(seed))


def _session(model, *, block_size: int = 16, tokens: int = PREFIX):
    """A session that saw a chunked prefill then 3 decode steps, in a NaN-poisoned pool."""
    ids = _ids(tokens + TAIL)
    cache = model.new_cache(poisoned_pool(model, num_blocks=600, block_size=block_size))
    run_chunks(model, cache, ids[: tokens - 3], [11, tokens - 14])
    for i in range(tokens - 3, tokens):
        model.step([StepItem(cache, ids[i : i + 1])])
    return cache, ids


def _continue(model, cache, ids: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, list]:
    """A multi-token turn, then 3 sampled decode steps; returns (logits [n, V], sampled ids)."""
    logits = [run_chunks(model, cache, ids[PREFIX : PREFIX + 5], [5])]
    token, sampled = ids[PREFIX + 5 : PREFIX + 6], []
    for _ in range(3):
        out = model.step([StepItem(cache, token)])[0]
        logits.append(out[None])
        token = torch.multinomial(torch.softmax(out, -1), 1, generator=gen)
        sampled.append(int(token))
    return torch.cat(logits), sampled


@pytest.fixture(scope="module")
def model():
    """qneuron tiny model, ~50% of tokens marked for eviction."""
    return tiny_model(window=3, offset=5.0)


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    """(cache, ids, info, fingerprint, rng) of one checkpointed session."""
    cache, ids = _session(model)
    gen = torch.Generator().manual_seed(11)
    torch.rand(3, generator=gen)
    fp = model_fingerprint(model)
    path = tmp_path_factory.mktemp("ckpt") / "s1" / "c1.safetensors"
    info = save_checkpoint(
        path,
        cache,
        token_ids=ids[:PREFIX].tolist(),
        fingerprint=fp,
        extra={"rng": gen.get_state()},
        metadata={"turn": "2"},
    )
    return cache, ids, info, fp, gen


def test_session_evicts(saved) -> None:
    cache, *_ = saved
    streams = cache.num_layers * cache.num_kv_heads
    assert cache.slots_held < 0.8 * PREFIX * streams, cache.lens


@pytest.mark.parametrize("block_size", [16, 4, 1], ids=["same-block", "block4", "block1"])
def test_resume_gives_identical_logits(model, saved, block_size: int) -> None:
    cache, ids, info, fp, gen = saved
    loaded = load_checkpoint(
        info.path, expected_sha256=info.sha256, expected_size=info.size_bytes, fingerprint=fp
    )
    pool = poisoned_pool(model, num_blocks=300, block_size=block_size)
    restored = SessionCache.from_state(loaded.state, pool, window=model.window)
    assert restored.lens == cache.lens and restored.next_pos == cache.next_pos == PREFIX
    assert loaded.token_ids == ids[:PREFIX].tolist() and loaded.metadata == {"turn": "2"}
    twin = cache.fork()
    twin_gen = torch.Generator().set_state(gen.get_state())
    expected, expected_tokens = _continue(model, twin, ids, twin_gen)
    new_gen = torch.Generator().set_state(loaded.extra["rng"])
    got, got_tokens = _continue(model, restored, ids, new_gen)
    assert torch.equal(got, expected), (got - expected).abs().max()
    assert got_tokens == expected_tokens
    twin.free()
    restored.free()
    assert pool.num_used == 0


NEW_PROCESS = """
import sys, torch
sys.path.insert(0, sys.argv[1])
from agentrt.dms.session_cache import SessionCache
from agentrt.sessions import load_checkpoint, model_fingerprint
from tests.dms.serving_helpers import poisoned_pool, tiny_model
from tests.sessions.test_checkpoint import _continue, _ids, PREFIX, TAIL
model = tiny_model(window=3, offset=5.0)
ck = load_checkpoint(sys.argv[2], expected_sha256=sys.argv[3], expected_size=int(sys.argv[4]),
                     fingerprint=model_fingerprint(model))
cache = SessionCache.from_state(ck.state, poisoned_pool(model, num_blocks=300, block_size=8), window=3)
gen = torch.Generator().set_state(ck.extra["rng"])
logits, tokens = _continue(model, cache, _ids(PREFIX + TAIL), gen)
torch.save({"logits": logits, "tokens": tokens}, sys.argv[5])
"""


@pytest.mark.slow
def test_resume_in_a_new_process(model, saved, tmp_path: Path) -> None:
    cache, ids, info, _, gen = saved
    out = tmp_path / "continued.pt"
    args = [str(REPO), str(info.path), info.sha256, str(info.size_bytes), str(out)]
    result = subprocess.run(
        [sys.executable, "-c", NEW_PROCESS, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    twin = cache.fork()
    expected, tokens = _continue(model, twin, ids, torch.Generator().set_state(gen.get_state()))
    twin.free()
    got = torch.load(out)
    assert torch.equal(got["logits"], expected), (got["logits"] - expected).abs().max()
    assert got["tokens"] == tokens


def test_adapter_flavour_and_empty_cache_round_trip(tmp_path: Path) -> None:
    model = tiny_model(flavour="adapter", window=4, offset=0.5, arch="llama")
    fp = model_fingerprint(model)
    pool = poisoned_pool(model, num_blocks=200, block_size=4)
    empty = model.new_cache(pool)
    info = save_checkpoint(tmp_path / "empty.safetensors", empty, token_ids=[], fingerprint=fp)
    state = load_checkpoint(info.path, fingerprint=fp).state
    assert (
        SessionCache.from_state(state, pool, window=4).slots_held == 0
        and info.compression_ratio == 1.0
    )
    ids = _ids(30, seed=5)
    cache = model.new_cache(pool)
    run_chunks(model, cache, ids[:20], [20])
    info = save_checkpoint(tmp_path / "a.safetensors", cache, token_ids=[], fingerprint=fp)
    restored = SessionCache.from_state(load_checkpoint(info.path).state, pool, window=4)
    for tail in (ids[20:27], ids[27:28]):
        expected = run_chunks(model, cache, tail, [tail.numel()])
        assert torch.equal(run_chunks(model, restored, tail, [tail.numel()]), expected)


def test_state_is_independent_of_block_size(model, saved) -> None:
    cache, *_ = saved
    state = cache.state_dict()
    other = SessionCache.from_state(
        state, poisoned_pool(model, num_blocks=300, block_size=3), window=3
    )
    again = other.state_dict()
    assert sorted(state) == sorted(again)
    assert all(torch.equal(state[k], again[k]) for k in state)
    assert state["layer.0.k"].shape == (sum(cache.lens[0]), 16)
    other.free()


def test_file_permissions_header_and_redacted_repr(saved) -> None:
    _, _, info, fp, _ = saved
    assert info.path.stat().st_mode & 0o777 == 0o600
    assert info.path.parent.stat().st_mode & 0o777 == 0o700
    assert info.format_version == FULL_VERSION and info.fingerprint == fp.digest
    loaded = load_checkpoint(info.path)
    assert loaded.header["fingerprint"] == fp.digest and loaded.fingerprint_parts == fp.parts
    assert loaded.header["dtype"] == "float32" and loaded.window == 3
    assert repr(loaded).startswith(f"LoadedCheckpoint(format_version={FULL_VERSION}, ")
    assert "turn" not in repr(loaded) and "token_ids" not in repr(loaded)


# -- refusals ----------------------------------------------------------------------------


def _copy(info, tmp_path: Path) -> Path:
    target = tmp_path / "copy.safetensors"
    target.write_bytes(info.path.read_bytes())
    return target


def test_flipped_byte_is_refused(saved, tmp_path: Path) -> None:
    _, _, info, _, _ = saved
    path = _copy(info, tmp_path)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x01  # inside the tensor data
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt: sha256"):
        load_checkpoint(path, expected_sha256=info.sha256, expected_size=info.size_bytes)
    with pytest.raises(CheckpointError, match="corrupt: sha256 of the tensor contents"):
        load_checkpoint(path)  # no catalog row: the header's content digest catches it


def test_truncated_and_missing_files_are_refused(saved, tmp_path: Path) -> None:
    _, _, info, _, _ = saved
    path = _copy(info, tmp_path)
    path.write_bytes(path.read_bytes()[: info.size_bytes // 2])
    with pytest.raises(CheckpointError, match="corrupt: size"):
        load_checkpoint(path, expected_sha256=info.sha256, expected_size=info.size_bytes)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="checkpoint file .* is missing"):
        load_checkpoint(tmp_path / "gone.safetensors", expected_sha256=info.sha256)


def _rewrite_header(info, tmp_path: Path, **changes: str) -> Path:
    with safe_open(str(info.path), framework="pt") as f:
        header = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    header.update(changes)
    path = tmp_path / "rewritten.safetensors"
    save_file(tensors, str(path), metadata=header)
    return path


def test_newer_format_and_foreign_files_are_refused(saved, tmp_path: Path) -> None:
    _, _, info, _, _ = saved
    newer = _rewrite_header(info, tmp_path, format_version=str(FORMAT_VERSION + 1))
    with pytest.raises(CheckpointError, match=f"format version {FORMAT_VERSION + 1}"):
        load_checkpoint(newer)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(3)}, str(foreign))
    with pytest.raises(CheckpointError, match="not an agentrt checkpoint"):
        load_checkpoint(foreign)


@pytest.mark.parametrize("part", ["weights", "dms_config", "dtype", "config", "tokenizer"])
def test_other_model_is_refused_naming_the_part(saved, part: str) -> None:
    _, _, info, fp, _ = saved
    dtype = torch.float64 if part == "dtype" else torch.float32
    other = tiny_model(window=3, offset=5.0, dtype=dtype)
    if part == "weights":
        with torch.no_grad():
            other.hf.model.layers[1].mlp.up_proj.weight[0, 0] += 1e-3
    elif part == "dms_config":
        other.dms = other.dms.replace(window_size=5)
    elif part == "config":
        other.hf.config.rms_norm_eps = 1e-5
    elif part == "tokenizer":
        other.tokenizer = tiny_tokenizer()
    with pytest.raises(CheckpointError, match=f"different model: {part} \\(checkpoint"):
        load_checkpoint(info.path, fingerprint=model_fingerprint(other))
    assert load_checkpoint(info.path, fingerprint=fp).token_ids  # the right model still loads


def test_restore_into_an_incompatible_pool_is_refused(model, saved) -> None:
    _, _, info, _, _ = saved
    state = load_checkpoint(info.path).state
    spec = CacheSpec(2, 2, head_dim=32, block_size=16, dtype=torch.float32, window=3)
    pool = KVPool(spec, 100)
    with pytest.raises(CheckpointError, match="head_dim: checkpoint 16, pool 32"):
        SessionCache.from_state(state, pool, window=3)
    with pytest.raises(CheckpointError, match="window: checkpoint 3, pool 7"):
        SessionCache.from_state(
            state, poisoned_pool(model, num_blocks=100, block_size=16), window=7
        )
    assert pool.num_free == 100


def test_pool_too_small_raises_budget_error_and_leaks_nothing(model, saved, monkeypatch) -> None:
    cache, _, info, _, _ = saved
    state = load_checkpoint(info.path).state
    small = poisoned_pool(model, num_blocks=5, block_size=4)
    with pytest.raises(BudgetError, match="needs .* KV blocks"):
        SessionCache.from_state(state, small, window=3)
    assert small.num_free == 5
    pool = poisoned_pool(model, num_blocks=300, block_size=4)
    calls = []

    def failing_write(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("device lost")

    monkeypatch.setattr("agentrt.dms.cache_state.copy_layer_in", failing_write)
    with pytest.raises(RuntimeError, match="device lost"):
        SessionCache.from_state(state, pool, window=3)
    assert pool.num_free == 300 and len(calls) == 2


def test_size_is_proportional_to_slots_not_tokens(tmp_path: Path) -> None:
    model = tiny_model(window=3, offset=-130.0)  # ~90% of tokens marked
    tokens = 320
    cache = model.new_cache(poisoned_pool(model, num_blocks=400, block_size=16))
    run_chunks(model, cache, _ids(tokens), [160, 160])
    info = save_checkpoint(
        tmp_path / "big.safetensors",
        cache,
        token_ids=_ids(tokens).tolist(),
        fingerprint=model_fingerprint(model),
    )
    per_slot = cache.pool.spec.bytes_per_slot
    slot_bytes = info.slots * per_slot
    dense_bytes = tokens * cache.num_layers * cache.num_kv_heads * per_slot
    assert info.compression_ratio > 6, info
    overhead = info.size_bytes - slot_bytes - 8 * tokens  # header, ring, lens
    assert 0 < overhead < 8192, (info.size_bytes, slot_bytes)
    assert info.size_bytes < 0.2 * dense_bytes, (info.size_bytes, dense_bytes)
    assert json.loads(load_checkpoint(info.path).header["slots"]) == info.slots


def _greedy(model, cache, ids: torch.Tensor) -> torch.Tensor:
    """A 5-token turn then 3 greedy decode steps; logits [8, V] on the model's device."""
    logits = [run_chunks(model, cache, ids[PREFIX : PREFIX + 5], [5])]
    token = ids[PREFIX + 5 : PREFIX + 6]
    for _ in range(3):
        out = model.step([StepItem(cache, token)])[0]
        logits.append(out[None])
        token = out.argmax()[None]
    return torch.cat(logits)


@pytest.mark.gpu
def test_restore_across_devices(tmp_path: Path) -> None:
    """A session saved from a CUDA pool resumes in a CUDA pool (other block size) and on CPU."""
    gpu, cpu = tiny_model(window=3, offset=5.0).to("cuda"), tiny_model(window=3, offset=5.0)
    fp = model_fingerprint(gpu)
    assert fp == model_fingerprint(cpu)  # the device is not part of the model's identity
    cache, ids = _session(gpu)
    info = save_checkpoint(tmp_path / "g.safetensors", cache, token_ids=[], fingerprint=fp)
    state = load_checkpoint(info.path, expected_sha256=info.sha256, fingerprint=fp).state
    expected = _greedy(gpu, cache.fork(), ids)
    on_gpu = SessionCache.from_state(
        state, poisoned_pool(gpu, num_blocks=300, block_size=4), window=3
    )
    on_cpu = SessionCache.from_state(
        state, poisoned_pool(cpu, num_blocks=300, block_size=16), window=3
    )
    torch.testing.assert_close(_greedy(gpu, on_gpu, ids), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(_greedy(cpu, on_cpu, ids).cuda(), expected, atol=1e-4, rtol=1e-4)
