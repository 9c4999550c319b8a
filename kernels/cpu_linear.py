"""fp32 linear layers on the CPU: the GEMV / GEMM routine each weight layout runs fastest with.

A decode step of a small model is a chain of matrix-vector products whose weights do not
fit in cache, so it runs at whatever bandwidth the GEMV routine reaches. Measured on the
2-core AMD EPYC box of docs/BENCHMARKS.md with the default model's projections:

- one row (decode of one session): torch's `F.linear` (MKL) reads a weight stored
  column-major (`w.t().contiguous().t()`, the same [out, in] tensor) 1.4-1.8x faster than
  the usual row-major one for the wide projections (out ≥ in: q, o, MLP gate and up, the
  LM head); the narrow ones (k, v, MLP down) are faster row-major;
- several rows (decode of several sessions, prefill chunks): MKL on a column-major weight
  falls behind the row-major one, while oneDNN's matmul, which torch ships for its own
  compiled CPU graphs (`torch.ops.mkldnn._linear_pointwise`), reads it faster than either;
  on a row-major weight oneDNN gained nothing in the engine's step (it pays a per-call
  cost that a microbenchmark hides), so row-major weights stay with `F.linear`.

`agentrt.dms.cpu_layout` stores the wide weights column-major and marks each projection
with its path: `GEMV` for the decoder's projections (`F.linear` for one row or a row-major
weight, oneDNN for several rows on a column-major one), `ONEDNN` (oneDNN at every row
count: 1.4x `F.linear` for one row in the engine's step) for a tied LM head, whose weight
must stay row-major for the embedding lookup. Same fp32 arithmetic, other summation orders:
results differ from `F.linear` by fp32 rounding only (about 1e-6 relative).
`AGENTRT_KERNELS=reference` and a torch without oneDNN keep `F.linear` throughout.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from agentrt.kernels.dispatch import torch_path

GEMV = "gemv"  # F.linear, but oneDNN for several rows on a column-major weight
ONEDNN = "onednn"  # oneDNN at every row count


@functools.cache
def onednn_linear_available() -> bool:
    """True when this torch has oneDNN's fp32 linear op and it agrees with `F.linear`."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        op = torch.ops.mkldnn._linear_pointwise
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(3, 8, generator=gen)
        w = torch.randn(5, 8, generator=gen)
        b = torch.randn(5, generator=gen)
        ok = torch.allclose(op(x, w, b, "none", [], ""), F.linear(x, w, b), rtol=1e-5, atol=1e-5)
        wc = w.t().contiguous().t()
        return ok and torch.allclose(op(x, wc, b, "none", [], ""), F.linear(x, w, b), atol=1e-5)
    except (AttributeError, RuntimeError):  # op not registered, or refused on this CPU
        return False


def cpu_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, path: str
) -> torch.Tensor:
    """`F.linear(x, weight, bias)` through the routine `path` (`GEMV` or `ONEDNN`) names.

    x [..., in]; weight [out, in]; bias [out] or None. Anything but fp32 CPU tensors, and
    `AGENTRT_KERNELS=reference`, goes to `F.linear`. No autograd through the oneDNN op:
    callers use this under `torch.no_grad()` only.
    """
    if path == GEMV and (x.numel() == x.shape[-1] or weight.is_contiguous()):
        return F.linear(x, weight, bias)  # one row: MKL's GEMV; a row-major weight: MKL's GEMM
    if (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.numel() > 0
        and torch_path() != "reference"
        and onednn_linear_available()
    ):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)
