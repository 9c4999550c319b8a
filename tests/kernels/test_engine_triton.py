"""End to end on CPU through the Triton kernels: AGENTRT_KERNELS=triton + TRITON_INTERPRET=1."""

from __future__ import annotations

import torch

from agentrt.dms.serving import StepItem
from tests.dms.serving_helpers import poisoned_pool, run_chunks, tiny_model


def _run(model, ids):
    cache = model.new_cache(poisoned_pool(model, num_blocks=400, block_size=4))
    prefill = run_chunks(model, cache, ids[:20], [13, 7])  # prefill kernel (chunks)
    decode = run_chunks(model, cache, ids[20:], [1] * (ids.numel() - 20))  # decode kernel
    batch = model.step(  # a ragged batch: one prefill chunk and one decode token
        [StepItem(cache, ids[:3]), StepItem(model.new_cache(cache.pool), ids[5:6])]
    )
    return torch.cat([prefill, decode]), batch


def test_tiny_model_through_triton_kernels_matches_reference(triton_interpret, monkeypatch):
    """Prefill chunks, decode tokens and a mixed batch via Triton equal the reference path."""
    model = tiny_model(window=3, offset=5.0)
    ids = torch.randint(0, 97, (28,), generator=torch.Generator().manual_seed(0))
    out_triton, batch_triton = _run(model, ids)
    monkeypatch.setenv("AGENTRT_KERNELS", "reference")
    out_ref, batch_ref = _run(model, ids)
    torch.testing.assert_close(out_triton, out_ref, atol=1e-4, rtol=1e-4)
    for a, b in zip(batch_triton, batch_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    dense = model.forward_reference(ids[None]).logits[0]
    torch.testing.assert_close(out_triton, dense, atol=1e-4, rtol=1e-4)
