"""Chunked prefill bounds peak memory by the chunk, never by the whole sequence."""

from __future__ import annotations

import pytest
import torch

from agentrt.dms.serving import StepItem

from .memtrack import PeakTensorBytes
from .serving_helpers import tiny_model


@pytest.mark.slow
def test_8k_prefill_in_chunks_of_512_keeps_peak_memory_bounded():
    """An 8k-token prefill in 512-token chunks never allocates anything close to an L×L buffer."""
    total, chunk = 8192, 512
    model = tiny_model(window=64, offset=5.0)
    pool = model.make_pool(num_blocks=total * 4 // 16 + 64, block_size=16)
    cache = model.new_cache(pool)
    ids = torch.randint(0, 97, (total,), generator=torch.Generator().manual_seed(0))
    tracker = PeakTensorBytes()
    with tracker:
        for i in range(0, total, chunk):
            model.step([StepItem(cache, ids[i : i + chunk])])
    assert cache.next_pos == total
    g = model.arch.group_size
    per_chunk = g * chunk * total * 4  # fp32 scores of one KV head's query group vs every key
    full_mask = total * total * 4  # one L×L fp32 mask of one head
    assert tracker.largest < full_mask / 4, (tracker.largest, full_mask)
    assert tracker.peak < 3.5 * per_chunk, (tracker.peak, per_chunk)
