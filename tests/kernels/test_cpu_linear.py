"""`cpu_linear`: the CPU routines for fp32 projections agree with `F.linear`."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from agentrt.kernels.cpu_linear import GEMV, ONEDNN, cpu_linear, onednn_linear_available

needs_onednn = pytest.mark.skipif(not onednn_linear_available(), reason="torch without oneDNN")


def _weights(out: int, inp: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(out, inp, generator=gen), torch.randn(out, generator=gen)


def _ops(fn) -> set[str]:
    """Names of the torch ops `fn()` ran."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


@pytest.mark.parametrize("path", [GEMV, ONEDNN])
@pytest.mark.parametrize("column", [False, True], ids=["row-major", "column-major"])
@pytest.mark.parametrize("shape", [(1, 48), (1, 1, 48), (5, 48), (2, 7, 48)])
@pytest.mark.parametrize("bias", [False, True])
def test_matches_f_linear(path: str, column: bool, shape: tuple[int, ...], bias: bool) -> None:
    w, b = _weights(80, 48)
    if column:
        w = w.t().contiguous().t()
    b = b if bias else None
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    out = cpu_linear(x, w, b, path)
    assert out.shape == (*shape[:-1], 80)
    torch.testing.assert_close(out, F.linear(x, w, b), rtol=1e-5, atol=1e-5)


@needs_onednn
def test_routines_per_row_count() -> None:
    """GEMV: one row, or a row-major weight, through F.linear; several rows on a column-major
    weight through oneDNN. ONEDNN: oneDNN always."""
    w, _ = _weights(64, 32)
    wc = w.t().contiguous().t()
    one, many = torch.randn(1, 32), torch.randn(4, 32)
    onednn = "mkldnn::_linear_pointwise"
    assert onednn not in _ops(lambda: cpu_linear(one, wc, None, GEMV))
    assert onednn not in _ops(lambda: cpu_linear(many, w, None, GEMV))
    assert onednn in _ops(lambda: cpu_linear(many, wc, None, GEMV))
    assert onednn in _ops(lambda: cpu_linear(one, w, None, ONEDNN))


def test_reference_mode_and_other_dtypes_keep_f_linear(monkeypatch) -> None:
    """AGENTRT_KERNELS=reference and non-fp32 inputs are F.linear, bit for bit."""
    w, b = _weights(64, 32)
    x = torch.randn(4, 32)
    monkeypatch.setenv("AGENTRT_KERNELS", "reference")
    assert torch.equal(cpu_linear(x, w, b, ONEDNN), F.linear(x, w, b))
    monkeypatch.delenv("AGENTRT_KERNELS")
    wb, xb = w.bfloat16(), x.bfloat16()
    assert torch.equal(cpu_linear(xb, wb, None, ONEDNN), F.linear(xb, wb))


def test_empty_input() -> None:
    w, b = _weights(64, 32)
    out = cpu_linear(torch.empty(0, 32), w, b, ONEDNN)
    assert out.shape == (0, 64)
