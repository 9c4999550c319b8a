"""The decode step's CPU pool access (`agentrt.kernels.decode_rows`) vs the reference ops."""

from __future__ import annotations

import pytest
import torch

from agentrt.kernels.decode_rows import (
    decode_attention_blocks,
    kv_rows,
    padding_mask,
    write_kv_rows,
)
from agentrt.kernels.reference import paged_decode_attention as reference
from agentrt.kernels.reference import write_kv_slots as write_reference
from tests.kernels._assert import TOLERANCES, assert_close
from tests.kernels._paged_cache import make_cache

DTYPES = [
    pytest.param(torch.float32, id="fp32"),
    pytest.param(torch.bfloat16, id="bf16"),
]


@pytest.mark.parametrize("dtype", DTYPES)
def test_write_kv_rows_equals_the_slot_write(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(1)
    bs, d, n = 12, 64, 29
    pool = torch.randn(7, 2, bs, d, generator=gen).to(dtype)
    expiry = torch.zeros(7, bs, dtype=torch.int32)
    slots = torch.randperm(7 * bs, generator=gen)[:n]
    k, v = torch.randn(n, d, generator=gen), torch.randn(n, d, generator=gen)
    want = pool.clone()
    write_reference(want, expiry.clone(), slots, k.to(dtype), v.to(dtype), expiry.view(-1)[:n])
    rows = kv_rows(slots, bs)
    write_kv_rows(pool, rows, rows + bs, k, v)
    assert torch.equal(want, pool)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("lens", "g", "bs"),
    [
        pytest.param([[17, 33], [5, 40]], 3, 16, id="ragged"),
        pytest.param([[24, 24], [24, 24]], 2, 8, id="equal"),
    ],
)
def test_attention_over_whole_blocks_equals_the_reference(
    lens: list[list[int]], g: int, bs: int, dtype: torch.dtype
) -> None:
    """With the step's precomputed mask (or none when every stream is equally long), no NaN
    guard and padding entries naming the stream's own first block, as the decode step calls it."""
    gen = torch.Generator().manual_seed(3)
    d = 64
    cache = make_cache(lens, bs, d, dtype, gen)
    pool = cache.kv_pool.nan_to_num(0.0)  # held blocks are finite (zeroed when allocated)
    tables = cache.block_tables.long()
    tables = torch.where(tables >= 0, tables, tables[..., :1])  # padding: the stream's own block
    q = torch.randn(len(lens), len(lens[0]) * g, d, generator=gen).to(dtype)
    longest = int(cache.cache_lens.max())
    blocks = tables[:, :, : -(-longest // bs)]
    padded = bool((cache.cache_lens < longest).any())
    mask = padding_mask(cache.cache_lens, longest, torch.float32) if padded else None
    out = decode_attention_blocks(
        q, pool, blocks, cache.cache_lens, longest, d**-0.5, mask=mask, padded=padded,
        guarded=False,
    )  # fmt: skip
    want = reference(q, pool, cache.block_tables, cache.cache_lens, d**-0.5)
    assert_close("decode_attention_blocks", want, out, *TOLERANCES[dtype])


def test_padding_mask_is_zero_on_held_slots_and_minus_inf_past_them() -> None:
    mask = padding_mask(torch.tensor([[2, 0, 3]], dtype=torch.int32), 3, torch.float32)
    inf = float("-inf")
    assert mask.shape == (1, 3, 1, 3)
    assert mask[0, :, 0].tolist() == [[0.0, 0.0, inf], [inf, inf, inf], [0.0, 0.0, 0.0]]
