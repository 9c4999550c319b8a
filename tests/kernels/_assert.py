"""The one comparison helper of the kernel tests: reports max-abs/relative error, fails on NaN."""

from __future__ import annotations

import torch

# (dtype, atol, rtol) used by every kernel test
TOLERANCES = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (5e-3, 5e-3),
    torch.bfloat16: (1e-2, 1e-2),
}


def assert_close(name: str, ref: torch.Tensor, out: torch.Tensor, atol: float, rtol: float) -> None:
    """Fail unless |out - ref| <= atol + rtol * |ref| everywhere and `out` has no NaN/inf."""
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert torch.isfinite(ref).all(), f"{name}: the reference has NaN/inf"
    bad = (~torch.isfinite(out)).sum().item()
    assert bad == 0, f"{name}: {bad} NaN/inf of {out.numel()} output values"
    if out.numel() == 0:
        return
    ref64, out64 = ref.double(), out.double()
    diff = (out64 - ref64).abs()
    rel = diff / ref64.abs().clamp_min(1e-12)
    worst = int(diff.argmax())
    over = diff > atol + rtol * ref64.abs()
    assert not over.any(), (
        f"{name}: {int(over.sum())} of {out.numel()} values off; max_abs={diff.max().item():.3e} "
        f"max_rel={rel.max().item():.3e} (atol={atol}, rtol={rtol}); worst at flat index "
        f"{worst}: ref={ref64.flatten()[worst].item():.6g} out={out64.flatten()[worst].item():.6g}"
    )
