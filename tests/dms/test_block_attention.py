"""Tiled DMS training attention: same forward and gradients as the dense [T, T] soft mask."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from agentrt.dms import DMSConfig
from agentrt.dms.block_attention import dms_tile_attention, tile_rows
from agentrt.dms.masks import expand_to_query_heads, key_flags, training_bias

from .tiny_models import adapter_model, random_ids


def _inputs(seq: int, h_q: int, h_kv: int, dim: int = 8, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(2, h_q, seq, dim, generator=gen, dtype=torch.float64)
    k = torch.randn(2, h_kv, seq, dim, generator=gen, dtype=torch.float64)
    v = torch.randn(2, h_kv, seq, dim, generator=gen, dtype=torch.float64)
    u = 3 * torch.randn(2, seq, h_kv, generator=gen, dtype=torch.float64)
    return [t.requires_grad_() for t in (q, k, v, u)]


def _dense(q, k, v, u, window: int) -> torch.Tensor:
    """The existing path: materialised soft mask, then SDPA over repeated KV heads."""
    group = q.shape[1] // k.shape[1]
    bias = expand_to_query_heads(training_bias(u, window), group)
    kk = k.repeat_interleave(group, dim=1)
    vv = v.repeat_interleave(group, dim=1)
    return F.scaled_dot_product_attention(q, kk, vv, attn_mask=bias)


def _tiled(q, k, v, u, window: int, rows: int) -> torch.Tensor:
    log_keep = F.logsigmoid(-key_flags(u)).transpose(1, 2)
    return dms_tile_attention(q.float(), k.float(), v.float(), log_keep.float(), window, rows=rows)


@pytest.mark.parametrize(
    ("seq", "window", "h_q", "h_kv", "rows"),
    [
        (13, 2, 4, 2, 4),
        (40, 5, 6, 2, 16),
        (40, 0, 2, 2, 7),
        (64, 17, 9, 3, 64),
        (33, 31, 4, 1, 5),
    ],
)
def test_forward_and_gradients_match_the_dense_mask(seq, window, h_q, h_kv, rows) -> None:
    q, k, v, u = _inputs(seq, h_q, h_kv)
    dense = _dense(q, k, v, u, window)
    weight = torch.randn(dense.shape, generator=torch.Generator().manual_seed(1))
    grads_dense = torch.autograd.grad((dense * weight).sum(), (q, k, v, u))
    tiled = _tiled(q, k, v, u, window, rows)
    assert tiled.dtype == torch.float32
    torch.testing.assert_close(tiled.double(), dense, atol=2e-5, rtol=1e-4)
    grads_tiled = torch.autograd.grad((tiled * weight.float()).sum(), (q, k, v, u))
    for name, a, b in zip("qkvu", grads_tiled, grads_dense, strict=True):
        torch.testing.assert_close(a.double(), b, atol=5e-5, rtol=1e-4, msg=name)
    assert grads_dense[3].abs().sum() > 0, "precondition: keys outside the window get gradient"


def test_tile_height_shrinks_with_the_sequence() -> None:
    assert tile_rows(9, 1024) * 1024 * 9 <= 1 << 21
    assert tile_rows(9, 4096) < tile_rows(9, 1024)
    assert tile_rows(9, 1 << 20) == 16, "never below the minimum"


@pytest.mark.parametrize("window", [1, 3])
def test_model_training_forward_tiled_equals_dense(window: int) -> None:
    """forward_train: logits and adapter gradients of the tiled path match the dense mask."""
    model = adapter_model("llama-gqa", dms=DMSConfig(window_size=window, separate_alpha=True))
    with torch.no_grad():
        for layer in model.hf.model.layers:
            layer.self_attn.dms_proj_alpha.weight.normal_(0, 0.05)
    params = [p for n, p in model.hf.named_parameters() if "dms_proj_alpha" in n]
    for p in model.hf.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    ids = random_ids(2, 24, seed=3)
    results = []
    for tiled in (False, True):
        out = model.forward_train(ids, noise_seed=7, tiled=tiled)
        loss = out.logits.square().mean() + out.decisions.mean()
        results.append((out.logits.detach(), torch.autograd.grad(loss, params)))
    (ld, gd), (lt, gt) = results
    # fp32, summation order differs (and the BLAS kernel may vary with alignment): ~1e-5 apart
    torch.testing.assert_close(lt, ld, atol=5e-5, rtol=1e-4)
    assert any(g.abs().sum() > 0 for g in gd)
    for a, b in zip(gt, gd, strict=True):  # fp32: summation order differs, so scale-relative
        torch.testing.assert_close(a, b, atol=1e-4 * float(b.abs().max()), rtol=1e-3)
