"""Restoring a packed cache: whole-block copies give back exactly the slots that were saved."""

from __future__ import annotations

import pytest
import torch

from agentrt.dms.cache_state import copy_layer_in, staging_rows
from agentrt.dms.kv_pool import UNUSED
from agentrt.dms.session_cache import SessionCache
from tests.dms.serving_helpers import poisoned_pool, run_chunks, tiny_model


@pytest.fixture(scope="module")
def model():
    """qneuron tiny model, about half of the tokens marked for eviction."""
    return tiny_model(window=3, offset=5.0)


@pytest.fixture(scope="module")
def cache(model):
    """A session cache that saw 61 tokens in three chunks (ragged stream lengths)."""
    ids = torch.randint(0, 97, (61,), generator=torch.Generator().manual_seed(7))
    c = model.new_cache(poisoned_pool(model, num_blocks=600, block_size=16))
    run_chunks(model, c, ids, [20, 30, 11])
    return c


@pytest.mark.parametrize("block_size", [1, 3, 16, 64], ids=lambda b: f"block{b}")
def test_restore_is_exact_and_touches_only_its_blocks(model, cache, block_size: int) -> None:
    state = cache.state_dict()
    assert len({n for row in cache.lens for n in row}) > 1, cache.lens  # ragged on purpose
    pool = poisoned_pool(model, num_blocks=400, block_size=block_size)
    restored = SessionCache.from_state(state, pool, window=model.window)
    again = restored.state_dict()
    assert sorted(again) == sorted(state)
    for name, tensor in state.items():
        assert torch.equal(again[name], tensor), name
    assert restored.lens == cache.lens and restored.next_pos == cache.next_pos
    held = {b for layer in restored.blocks for head in layer for b in head}
    others = torch.tensor(sorted(set(range(pool.num_blocks)) - held))
    assert torch.isnan(pool.kv[others]).all(), "a block outside the session was written"
    for layer in range(restored.num_layers):  # the tail of each last block stays UNUSED
        for head, n in zip(restored.blocks[layer], restored.lens[layer], strict=True):
            if head and n % block_size:
                assert (pool.slot_expiry[head[-1], n % block_size :] == UNUSED).all()
                assert (pool.slot_pos[head[-1], n % block_size :] == UNUSED).all()
    restored.free()
    assert pool.num_used == 0


def test_staging_rows_align_each_stream_to_its_blocks() -> None:
    rows = staging_rows([[7], [], [2, 9], [4]], [3, 0, 5, 4], 4)
    assert rows.tolist() == [0, 1, 2, 4, 5, 6, 7, 8, 12, 13, 14, 15]


def test_copy_layer_in_without_padding_copies_whole_blocks(model) -> None:
    pool = poisoned_pool(model, num_blocks=10, block_size=2)
    blocks = [pool.allocate(2), pool.allocate(1)]
    k = torch.arange(6 * 16, dtype=torch.float32).view(6, 16)
    state = {
        "layer.0.k": k,
        "layer.0.v": -k,
        "layer.0.pos": torch.arange(6, dtype=torch.int32),
        "layer.0.expiry": torch.arange(10, 16, dtype=torch.int32),
    }
    copy_layer_in(pool, blocks, [4, 2], state, 0)
    order = torch.tensor(blocks[0] + blocks[1])
    assert torch.equal(pool.kv[order, 0].reshape(6, 16), k)
    assert torch.equal(pool.kv[order, 1].reshape(6, 16), -k)
    assert pool.slot_pos[order].flatten().tolist() == list(range(6))
    assert pool.slot_expiry[order].flatten().tolist() == list(range(10, 16))
