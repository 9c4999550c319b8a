"""dms_prefill_attention: reference vs a dense DMS-mask oracle, Triton vs reference."""

from __future__ import annotations

import pytest
import torch

from agentrt.kernels import backend_for, dms_prefill_attention
from agentrt.kernels.reference import dms_prefill_attention as reference
from tests.kernels._assert import TOLERANCES, assert_close
from tests.kernels._paged_cache import PrefillBatch, dense_prefill, make_cache, make_prefill

# seqs: (new tokens, cached slots per kv head); a sequence may bring 0 new tokens
CASES = [
    pytest.param(dict(seqs=[(5, [0, 3]), (70, [37, 50]), (1, [16, 5])], g=1, d=64, bs=16), id="g1-d64-3seqs"),
    pytest.param(dict(seqs=[(20, [40]), (33, [0])], g=4, d=128, bs=16), id="g4-d128"),
    pytest.param(dict(seqs=[(9, [12, 0])], g=8, d=64, bs=8), id="g8-d64-bs8"),
    pytest.param(dict(seqs=[(17, [7, 30]), (0, [3, 4]), (4, [0, 1])], g=3, d=80, bs=12), id="g3-d80-bs12-empty-seq"),
    pytest.param(dict(seqs=[(10, [20])], g=2, d=256, bs=16), id="g2-d256"),
    pytest.param(dict(seqs=[(40, [0, 0])], g=2, d=64, bs=16), id="g2-no-cache"),
]  # fmt: skip
DTYPES = [
    pytest.param(torch.float32, id="fp32"),
    pytest.param(torch.bfloat16, id="bf16"),
    pytest.param(torch.float16, id="fp16"),
]


def _batch(case: dict, dtype: torch.dtype, seed: int = 0) -> PrefillBatch:
    return make_prefill(case["seqs"], case["g"], case["d"], case["bs"], dtype, seed)


def _all_expired(dtype: torch.dtype) -> PrefillBatch:
    """Every cached slot and new key expired before any query: each output row is zeros."""
    batch = _batch(dict(seqs=[(6, [9, 4])], g=2, d=64, bs=8), dtype)
    batch.cache.slot_expiry.fill_(-1)
    batch.k_expiry.copy_(batch.positions[:, None].expand_as(batch.k_expiry) - 1)
    return batch


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_reference_matches_dense(case: dict, dtype: torch.dtype) -> None:
    batch = _batch(case, dtype)
    out = reference(*batch.args(), 0.125)
    assert out.dtype == dtype
    assert_close("reference", dense_prefill(batch, 0.125), out, *TOLERANCES[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_triton_interpreter_matches_reference(
    case: dict, dtype: torch.dtype, triton_interpret: None, poison_alloc: None
) -> None:
    batch = _batch(case, dtype)
    assert backend_for(batch.q) == "triton"
    out = dms_prefill_attention(*batch.args(), 0.125)
    assert out.dtype == dtype and out.shape == batch.q.shape
    assert_close("triton", reference(*batch.args(), 0.125), out, *TOLERANCES[dtype])


def test_everything_expired_gives_zeros(triton_interpret: None, poison_alloc: None) -> None:
    batch = _all_expired(torch.float32)
    zeros = torch.zeros_like(batch.q)
    assert_close("dense", zeros, dense_prefill(batch, 0.125).float(), 0.0, 0.0)
    assert_close("reference", zeros, reference(*batch.args(), 0.125), 0.0, 0.0)
    assert_close("triton", zeros, dms_prefill_attention(*batch.args(), 0.125), 0.0, 0.0)


def test_window_rule_matches_dms_definition() -> None:
    """w=2, marked keys expire at j + w: a query at i sees key j iff j <= i and (i - j <= w or kept)."""
    w, n = 2, 7
    gen = torch.Generator().manual_seed(3)
    marked = torch.tensor([1, 0, 1, 1, 0, 1, 1], dtype=torch.bool)
    pos = torch.arange(n, dtype=torch.int32)
    k_expiry = torch.where(marked, pos + w, 2**31 - 1).to(torch.int32)[:, None]
    q = torch.randn(n, 1, 16, generator=gen)
    k, v = torch.randn(n, 1, 16, generator=gen), torch.randn(n, 1, 16, generator=gen)
    cache = make_cache([[0]], 4, 16, torch.float32, gen)
    cu = torch.tensor([0, n], dtype=torch.int32)
    c = cache
    args = (q, k, v, k_expiry, pos, cu, c.kv_pool, c.slot_expiry, c.block_tables, c.cache_lens)
    out = reference(*args, 1.0)
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    visible = (j <= i) & ((i - j <= w) | ~marked[None, :])
    scores = (q[:, 0] @ k[:, 0].T).masked_fill(~visible, float("-inf"))
    assert_close("window", scores.softmax(-1) @ v[:, 0], out[:, 0], 1e-6, 1e-6)


def test_rejects_bad_inputs() -> None:
    batch = _batch(CASES[0].values[0], torch.float32)
    args = list(batch.args())
    with pytest.raises(ValueError, match=r"k_expiry must be \[76, 2\]"):
        dms_prefill_attention(*args[:3], args[3][:, :1], *args[4:], 0.1)
    with pytest.raises(TypeError, match="positions must have dtype"):
        dms_prefill_attention(*args[:4], args[4].long(), *args[5:], 0.1)
    with pytest.raises(ValueError, match="block_tables has 3 sequences, expected 2"):
        dms_prefill_attention(*args[:5], args[5][:-1], *args[6:], 0.1)
    with pytest.raises(TypeError, match="k dtype torch.float16"):
        dms_prefill_attention(args[0], args[1].half(), *args[2:], 0.1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "seqs",
    [
        pytest.param([(1000, [3000] * 8), (517, [0, 5, 9, 1200, 40, 0, 77, 2048])], id="2seqs"),
        pytest.param([(2048, [0] * 8)], id="fresh-2k"),
    ],
)
def test_gpu_llama_shapes(seqs: list, dtype: torch.dtype, cuda_kernels: None) -> None:
    batch = make_prefill(seqs, 4, 128, 64, dtype, seed=5, window=512).to("cuda")
    assert backend_for(batch.q) == "triton"
    out = dms_prefill_attention(*batch.args(), 128**-0.5)
    assert_close("gpu", reference(*batch.args(), 128**-0.5), out, *TOLERANCES[dtype])


def test_float64_is_reference_only(monkeypatch: pytest.MonkeyPatch) -> None:
    batch = _batch(CASES[0].values[0], torch.float64)
    monkeypatch.setenv("AGENTRT_KERNELS", "reference")
    out = dms_prefill_attention(*batch.args(), 0.125)
    assert_close("fp64", dense_prefill(batch, 0.125), out, 1e-12, 1e-12)
    monkeypatch.setenv("AGENTRT_KERNELS", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(TypeError, match="torch.float64 runs only on the reference backend"):
        dms_prefill_attention(*batch.args(), 0.125)


@pytest.mark.parametrize("dtype", [*DTYPES, pytest.param(torch.float64, id="fp64")])
@pytest.mark.parametrize("case", CASES)
def test_cpu_sdpa_path_matches_reference(
    case: dict, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Off CUDA in auto mode the public op runs the fused-SDPA path; it agrees with the oracle."""
    monkeypatch.delenv("AGENTRT_KERNELS", raising=False)
    batch = _batch(case, dtype)
    out = dms_prefill_attention(*batch.args(), 0.125)
    assert out.dtype == dtype and out.shape == batch.q.shape
    tol = (1e-12, 1e-12) if dtype == torch.float64 else TOLERANCES[dtype]
    assert_close("sdpa", reference(*batch.args(), 0.125), out, *tol)
    assert_close("sdpa vs dense", dense_prefill(batch, 0.125), out, *tol)


def test_cpu_sdpa_path_gives_zeros_where_nothing_is_visible(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AGENTRT_KERNELS", raising=False)
    batch = _all_expired(torch.float32)
    out = dms_prefill_attention(*batch.args(), 0.125)
    assert_close("sdpa", torch.zeros_like(batch.q), out, 0.0, 0.0)
