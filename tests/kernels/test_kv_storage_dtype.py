"""K/V stored in another dtype than the queries (bf16/fp16 pool, fp32 compute): every kernel
upcasts what it loads before the math, so it matches fp32 math over the upcast pool."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from agentrt.dms.serving import StepItem
from agentrt.kernels import dms_prefill_attention, paged_decode_attention, write_kv_slots
from agentrt.kernels.reference import dms_prefill_attention as prefill_reference
from agentrt.kernels.reference import paged_decode_attention as decode_reference
from tests.dms.serving_helpers import run_chunks, tiny_model
from tests.kernels._assert import TOLERANCES, assert_close
from tests.kernels._paged_cache import make_cache, make_prefill

STORAGE = [
    pytest.param(torch.bfloat16, id="bf16-storage"),
    pytest.param(torch.float16, id="fp16-storage"),
]
FP32 = TOLERANCES[torch.float32]


def _decode_inputs(storage: torch.dtype):
    gen = torch.Generator().manual_seed(0)
    cache = make_cache([[37, 5], [0, 70]], 16, 64, torch.float32, gen)
    q = torch.randn(2, 2 * 4, 64, generator=gen)  # g = 4, fp32 queries
    stored = dataclasses.replace(cache, kv_pool=cache.kv_pool.to(storage))
    upcast = dataclasses.replace(cache, kv_pool=stored.kv_pool.float())
    return q, stored, upcast


def _decode(q, cache, splits=None):
    args = (q, cache.kv_pool, cache.block_tables, cache.cache_lens, 0.125)
    return paged_decode_attention(*args, splits)


@pytest.mark.parametrize("storage", STORAGE)
def test_decode_reference_upcasts_the_pool(storage):
    q, stored, upcast = _decode_inputs(storage)
    out = _decode(q, stored)
    assert out.dtype == torch.float32
    assert_close("reference", _decode(q, upcast), out, *FP32)


@pytest.mark.parametrize("storage", STORAGE)
def test_decode_triton_interpreter_with_narrow_storage(storage, triton_interpret, poison_alloc):
    q, stored, upcast = _decode_inputs(storage)
    for splits in (1, 3):
        out = _decode(q, stored, splits)
        args = (q, upcast.kv_pool, upcast.block_tables, upcast.cache_lens, 0.125)
        assert_close(f"triton split {splits}", decode_reference(*args), out, *FP32)


def _prefill_batch(storage: torch.dtype):
    batch = make_prefill([(9, [12, 0]), (20, [40, 7])], 2, 64, 8, torch.float32, seed=1)
    stored = dataclasses.replace(batch.cache, kv_pool=batch.cache.kv_pool.to(storage))
    upcast = dataclasses.replace(batch.cache, kv_pool=stored.kv_pool.float())
    return dataclasses.replace(batch, cache=stored), dataclasses.replace(batch, cache=upcast)


@pytest.mark.parametrize("storage", STORAGE)
def test_prefill_reference_and_sdpa_upcast_the_pool(storage, monkeypatch):
    stored, upcast = _prefill_batch(storage)
    want = prefill_reference(*upcast.args(), 0.125)
    for mode in ("reference", "auto"):  # auto on CPU = the fused-SDPA path
        monkeypatch.setenv("AGENTRT_KERNELS", mode)
        out = dms_prefill_attention(*stored.args(), 0.125)
        assert out.dtype == torch.float32
        assert_close(f"prefill {mode}", want, out, *FP32)


@pytest.mark.parametrize("storage", STORAGE)
def test_prefill_triton_interpreter_with_narrow_storage(storage, triton_interpret, poison_alloc):
    stored, upcast = _prefill_batch(storage)
    out = dms_prefill_attention(*stored.args(), 0.125)
    assert_close("triton prefill", prefill_reference(*upcast.args(), 0.125), out, *FP32)


def test_write_converts_to_the_storage_dtype(triton_interpret, monkeypatch):
    """fp32 rows written into a bf16 pool are rounded to bf16, by Triton as by the reference."""
    gen = torch.Generator().manual_seed(0)
    k, v = torch.randn(5, 32, generator=gen), torch.randn(5, 32, generator=gen)
    slots = torch.tensor([0, 3, 9, 12, 17], dtype=torch.int64)
    expiry = torch.arange(5, dtype=torch.int32)
    for mode in ("triton", "reference"):
        monkeypatch.setenv("AGENTRT_KERNELS", mode)
        kv = torch.zeros(6, 2, 4, 32, dtype=torch.bfloat16)
        write_kv_slots(kv, torch.zeros(6, 4, dtype=torch.int32), slots, k, v, expiry)
        assert torch.equal(kv[slots // 4, 0, slots % 4], k.to(torch.bfloat16)), mode
        assert torch.equal(kv[slots // 4, 1, slots % 4], v.to(torch.bfloat16)), mode


def test_tiny_model_bf16_storage_through_triton_matches_reference(triton_interpret, monkeypatch):
    """Prefill chunks and decode tokens of an fp32 model over a bf16 pool: Triton = reference."""
    model = tiny_model(arch="llama", window=3, offset=5.0)
    ids = torch.randint(0, 97, (26,), generator=torch.Generator().manual_seed(0))

    def run():
        cache = model.new_cache(model.make_pool(num_blocks=200, block_size=4, kv_dtype="bfloat16"))
        out = run_chunks(model, cache, ids, [13, 7] + [1] * 6)
        batch = model.step(
            [StepItem(cache, ids[:3]), StepItem(model.new_cache(cache.pool), ids[5:6])]
        )
        assert cache.pool.kv.dtype == torch.bfloat16
        return out, batch

    out_triton, batch_triton = run()
    monkeypatch.setenv("AGENTRT_KERNELS", "reference")
    out_ref, batch_ref = run()
    torch.testing.assert_close(out_triton, out_ref, atol=1e-4, rtol=1e-4)
    for a, b in zip(batch_triton, batch_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
