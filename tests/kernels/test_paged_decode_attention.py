"""paged_decode_attention: reference vs a dense oracle, Triton (interpreter / GPU) vs reference."""

from __future__ import annotations

import pytest
import torch

from agentrt.kernels import backend_for, choose_num_splits, paged_decode_attention
from agentrt.kernels.reference import paged_decode_attention as reference
from tests.kernels._assert import TOLERANCES, assert_close
from tests.kernels._paged_cache import dense_decode, make_cache

CASES = [
    pytest.param(dict(lens=[[0, 1], [17, 33]], g=1, d=64, bs=16, splits=None), id="g1-d64-empty-len1"),
    pytest.param(dict(lens=[[100, 37], [0, 64], [5, 129]], g=4, d=128, bs=16, splits=3), id="g4-d128-split3"),
    pytest.param(dict(lens=[[70], [1]], g=8, d=64, bs=8, splits=2), id="g8-d64-bs8-split2"),
    pytest.param(dict(lens=[[45, 0], [31, 2]], g=3, d=80, bs=32, splits=None), id="g3-d80-bs32"),
    pytest.param(dict(lens=[[300]], g=5, d=96, bs=16, splits=None), id="g5-d96-autosplit"),
    pytest.param(dict(lens=[[20, 40]], g=2, d=256, bs=16, splits=2), id="g2-d256-split2"),
    pytest.param(dict(lens=[[0, 0]], g=2, d=64, bs=16, splits=4), id="all-empty-split4"),
    pytest.param(dict(lens=[[25, 13], [7, 0]], g=6, d=128, bs=12, splits=1), id="g6-d128-bs12"),
    pytest.param(dict(lens=[[9]], g=7, d=64, bs=4, splits=5), id="g7-splits-exceed-tiles"),
]  # fmt: skip
DTYPES = [
    pytest.param(torch.float32, id="fp32"),
    pytest.param(torch.bfloat16, id="bf16"),
    pytest.param(torch.float16, id="fp16"),
]


def _inputs(case: dict, dtype: torch.dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    cache = make_cache(case["lens"], case["bs"], case["d"], dtype, gen)
    num_q_heads = len(case["lens"][0]) * case["g"]
    q = torch.randn(len(case["lens"]), num_q_heads, case["d"], generator=gen).to(dtype)
    return q, cache, case["d"] ** -0.5


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_reference_matches_dense(case: dict, dtype: torch.dtype) -> None:
    q, cache, scale = _inputs(case, dtype)
    args = (q, cache.kv_pool, cache.block_tables, cache.cache_lens, scale)
    out = reference(*args, case["splits"])
    assert out.dtype == dtype
    assert_close("reference", dense_decode(q, cache, scale), out, *TOLERANCES[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_triton_interpreter_matches_reference(
    case: dict, dtype: torch.dtype, triton_interpret: None, poison_alloc: None
) -> None:
    q, cache, scale = _inputs(case, dtype)
    assert backend_for(q) == "triton"
    args = (q, cache.kv_pool, cache.block_tables, cache.cache_lens, scale)
    out = paged_decode_attention(*args, case["splits"])
    assert out.dtype == dtype and out.shape == q.shape
    assert_close("triton", reference(*args), out, *TOLERANCES[dtype])


def test_public_entry_uses_reference_on_cpu(reference_backend: None) -> None:
    q, cache, scale = _inputs(CASES[1].values[0], torch.float32)
    args = (q, cache.kv_pool, cache.block_tables, cache.cache_lens, scale)
    assert_close("dispatch", reference(*args), paged_decode_attention(*args), 0.0, 0.0)


@pytest.mark.parametrize(
    ("max_len", "streams", "sms", "expected"),
    [
        pytest.param(0, 8, 132, 1, id="empty"),
        pytest.param(256, 8, 132, 1, id="short"),
        pytest.param(4096, 8, 132, 16, id="one-seq-4k-by-length"),
        pytest.param(131072, 8, 132, 64, id="one-seq-128k-capped"),
        pytest.param(131072, 256, 132, 3, id="batch32-by-occupancy"),
        pytest.param(131072, 4096, 132, 1, id="full-gpu"),
    ],
)
def test_choose_num_splits(max_len: int, streams: int, sms: int, expected: int) -> None:
    assert choose_num_splits(max_len, streams, sms) == expected


def _bad(kind: str):
    q, cache, scale = _inputs(CASES[0].values[0], torch.float32)
    pool, bt, lens = cache.kv_pool, cache.block_tables, cache.cache_lens
    return {
        "q-2d": ((q[0], pool, bt, lens, scale), ValueError, "[S, H_q, D]"),
        "gqa": ((q[:, :1].expand(-1, 3, -1), pool, bt, lens, scale), ValueError, "H_q (3)"),
        "dtype": ((q.int(), pool, bt, lens, scale), TypeError, "torch.int32"),
        "head-dim": ((q[..., :32], pool, bt, lens, scale), ValueError, "head_dim 64 != "),
        "lens-shape": ((q, pool, bt, lens[:, :1], scale), ValueError, "(2, 1)"),
        "table-dtype": ((q, pool, bt.long(), lens, scale), TypeError, "torch.int64"),
        "splits": ((q, pool, bt, lens, scale, 0), ValueError, "got 0"),
    }[kind]


@pytest.mark.parametrize(
    "kind", ["q-2d", "gqa", "dtype", "head-dim", "lens-shape", "table-dtype", "splits"]
)
def test_rejects_bad_inputs(kind: str) -> None:
    args, exc, needle = _bad(kind)
    with pytest.raises(exc) as info:
        paged_decode_attention(*args)
    assert needle in str(info.value)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("num_seqs", "max_len", "bs", "splits"),
    [
        pytest.param(8, 6000, 64, None, id="s8-6k-bs64-auto"),
        pytest.param(2, 40000, 16, None, id="s2-40k-bs16-auto"),
        pytest.param(4, 3000, 256, 1, id="s4-3k-bs256-nosplit"),
    ],
)
def test_gpu_llama_shapes(
    num_seqs: int, max_len: int, bs: int, splits: int | None, dtype: torch.dtype, cuda_kernels: None
) -> None:
    gen = torch.Generator().manual_seed(1)
    lens = torch.randint(0, max_len, (num_seqs, 8), generator=gen)
    lens[0, 0] = 0
    cache = make_cache(lens.tolist(), bs, 128, dtype, gen).to("cuda")
    q = torch.randn(num_seqs, 32, 128, generator=gen).to(dtype).cuda()
    args = (q, cache.kv_pool, cache.block_tables, cache.cache_lens, 128**-0.5)
    assert backend_for(q) == "triton"
    out = paged_decode_attention(*args, splits)
    assert_close("gpu", reference(*args), out, *TOLERANCES[dtype])


def test_float64_is_reference_only(monkeypatch: pytest.MonkeyPatch) -> None:
    q, cache, scale = _inputs(CASES[1].values[0], torch.float64)
    args = (q, cache.kv_pool, cache.block_tables, cache.cache_lens, scale)
    monkeypatch.setenv("AGENTRT_KERNELS", "reference")
    assert_close("fp64", dense_decode(q, cache, scale), paged_decode_attention(*args), 1e-12, 1e-12)
    monkeypatch.setenv("AGENTRT_KERNELS", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(TypeError, match="torch.float64 runs only on the reference backend"):
        paged_decode_attention(*args)


@pytest.mark.parametrize("dtype", [*DTYPES, pytest.param(torch.float64, id="fp64")])
@pytest.mark.parametrize("case", CASES)
def test_cpu_sdpa_path_matches_reference(
    case: dict, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch, poison_alloc: None
) -> None:
    """Off CUDA in auto mode the public op runs the fused-SDPA path (NaN in the unused pool
    slots, empty streams included); it agrees with the oracle and the dense attention."""
    monkeypatch.delenv("AGENTRT_KERNELS", raising=False)
    q, cache, scale = _inputs(case, dtype)
    assert backend_for(q) == "reference"
    args = (q, cache.kv_pool, cache.block_tables, cache.cache_lens, scale)
    out = paged_decode_attention(*args, case["splits"])
    assert out.dtype == dtype and out.shape == q.shape
    tol = (1e-12, 1e-12) if dtype == torch.float64 else TOLERANCES[dtype]
    assert_close("sdpa", reference(*args), out, *tol)
    assert_close("sdpa vs dense", dense_decode(q, cache, scale), out, *tol)
