"""Property test: random session operations never leak pool blocks and keep the slot formula."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentrt.dms.serving import StepItem

from .serving_helpers import tiny_model

MODEL = None


def _model():
    global MODEL
    if MODEL is None:
        MODEL = tiny_model(window=2, offset=-100.0)  # ~85% of tokens marked
    return MODEL


OPS = st.lists(
    st.tuples(
        st.sampled_from(["new", "prefill", "decode", "batch", "fork", "free"]), st.integers(0, 50)
    ),
    min_size=110,
    max_size=140,
)


def _slot_invariant(cache) -> None:
    ring = cache.window + 1
    for layer in range(cache.num_layers):
        for h in range(cache.num_kv_heads):
            n = cache.next_pos
            # every stream holds at least the window and never more than all tokens
            assert min(n, ring) <= cache.lens[layer][h] <= n, (cache.lens, n)
            assert len(cache.blocks[layer][h]) == -(-cache.lens[layer][h] // cache.pool.block_size)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS)
def test_random_operations_never_leak(ops):
    """~1000 random new/prefill/decode/batch/fork/free operations: accounting always balances."""
    model = _model()
    pool = model.make_pool(num_blocks=3000, block_size=3)
    live = []
    for op, arg in ops:
        if op == "new" or not live:
            live.append(model.new_cache(pool))
        elif op == "prefill":
            c = live[arg % len(live)]
            model.step([StepItem(c, torch.randint(0, 97, (1 + arg % 9,)))])
        elif op == "decode":
            c = live[arg % len(live)]
            model.step([StepItem(c, torch.randint(0, 97, (1,)))])
        elif op == "batch":
            batch = [
                StepItem(c, torch.randint(0, 97, (1 + (arg + i) % 3,))) for i, c in enumerate(live)
            ]
            model.step(batch)
        elif op == "fork":
            live.append(live[arg % len(live)].fork())
        elif op == "free":
            live.pop(arg % len(live)).free()
        for c in live:
            _slot_invariant(c)
        owners: dict[int, int] = {}
        for c in live:
            for row in c.blocks:
                for blocks in row:
                    for b in blocks:
                        owners[b] = owners.get(b, 0) + 1
        assert pool.num_used == len(owners)
        assert all(pool.refcount(b) == n for b, n in owners.items())
        assert pool.num_free + pool.num_used == pool.num_blocks
    for c in live:
        c.free()
    assert pool.num_free == pool.num_blocks
