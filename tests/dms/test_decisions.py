"""Eviction decisions: both flavours, the q-neuron zeroing, alpha_per, and the gating maths."""

from __future__ import annotations

import math

import pytest
import torch

from agentrt.dms import DMSConfig, DMSModel
from agentrt.dms.gating import hard_decisions, logistic_noise, soft_decisions
from agentrt.dms.projections import project_layer, rope_tables

from .tiny_models import (
    GQA_ARCHS,
    adapter_model,
    arch_params,
    assert_close,
    clone,
    decision_rows,
    random_ids,
    tiny_hf,
)

# Offset 0 puts the threshold at r = 0, so roughly half the tokens are marked.
EVICT = DMSConfig(window_size=2, initial_alpha_offset=0.0)
NO_EVICT = EVICT.replace(disable_eviction=True)
Q_ARCHS = [*GQA_ARCHS, "llama-mha", "qwen3-mha"]
GROUPED = ["llama-gqa", "mistral", "qwen2-bias", "qwen3-qknorm"]  # g = 2


def _dims(hf) -> tuple[int, int]:
    cfg = hf.config
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return d, cfg.num_attention_heads // cfg.num_key_value_heads


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.double()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.double()


def _linear(x: torch.Tensor, module: torch.nn.Linear) -> torch.Tensor:
    out = x.double() @ module.weight.double().T
    return out if module.bias is None else out + module.bias.double()


def independent_logits(hf, h: torch.Tensor, layer_idx: int, dms: DMSConfig) -> torch.Tensor:
    """z = s·r − b [B, T, H_kv] in float64, straight from the weights (dms-reference.md §1)."""
    cfg = hf.config
    layer = hf.model.layers[layer_idx]
    attn = layer.self_attn
    d, g = _dims(hf)
    if dms.separate_alpha:  # adapter on the pre-norm residual, own RMSNorm
        r = _linear(_rms(h, attn.dms_proj_alpha_norm.weight, cfg.rms_norm_eps), attn.dms_proj_alpha)
    else:  # channel d−1 of query heads 0, g, 2g, … after q_norm, before RoPE
        x = _rms(h, layer.input_layernorm.weight, cfg.rms_norm_eps)
        q = _linear(x, attn.q_proj).view(*h.shape[:2], cfg.num_attention_heads, d)
        if hasattr(attn, "q_norm"):
            q = _rms(q, attn.q_norm.weight, cfg.rms_norm_eps)
        r = q[:, :, ::g, d - 1]
    z = r * dms.alpha_scale - dms.initial_alpha_offset
    if dms.alpha_per == "layer":
        z = z[..., :1].expand_as(z)
    return z


def _perturb_rows(hf, rows: list[int], how: str) -> None:
    """Change q_proj rows (and bias entries) of every layer: 'negate' or 'shift'."""
    with torch.no_grad():
        for layer in hf.model.layers:
            for param in (layer.self_attn.q_proj.weight, layer.self_attn.q_proj.bias):
                if param is None:
                    continue
                if how == "negate":
                    param[rows] *= -1
                else:
                    param[rows] += 0.5


def _scale_q_norm_last_channel(hf) -> None:
    """Qwen3: scale q_norm.weight[d−1] by −3, i.e. channel d−1 of every head after q_norm."""
    d, _ = _dims(hf)
    with torch.no_grad():
        for layer in hf.model.layers:
            layer.self_attn.q_norm.weight[d - 1] *= -3.0


def _layer_qkv(hf, ids: torch.Tensor, dms: DMSConfig | None, layer_idx: int = 0):
    model = DMSModel(hf)
    h = hf.model.embed_tokens(ids)
    positions = torch.arange(ids.shape[1]).expand(ids.shape[0], -1)
    cos, sin = rope_tables(hf, h, positions)
    with torch.no_grad():
        return project_layer(hf.model.layers[layer_idx], h, cos, sin, model.arch, dms)


# --------------------------------------------------------------------------- flavour Q


def _qneuron_cases():
    # Negating a row flips the neuron's sign and keeps q_norm's RMS (Qwen3) unchanged;
    # a shift changes the RMS of the whole head, so it is only used without q/k norms.
    cases = []
    for name in Q_ARCHS:
        cases.append(pytest.param(name, "negate", id=f"{name}-negate"))
        if "qwen3" not in name:
            cases.append(pytest.param(name, "shift", id=f"{name}-shift"))
    # With g = 1 every head is a decision head, so q_norm's shared last channel is only the
    # neuron: scaling it moves decisions and nothing else.
    cases.append(pytest.param("qwen3-mha", "q_norm", id="qwen3-mha-q_norm"))
    return cases


@pytest.mark.parametrize("name, how", _qneuron_cases())
def test_qneuron_channel_changes_decisions_not_attention(name: str, how: str) -> None:
    hf = tiny_hf(name)
    ids = random_ids(2, 12)
    base_logits = DMSModel(hf, NO_EVICT).forward_reference(ids).logits
    base_teacher = DMSModel(hf, EVICT).forward_train(ids, noise_seed=0, teacher=True).logits
    base_dec = DMSModel(hf, EVICT).forward_reference(ids).decisions

    other = clone(hf)
    if how == "q_norm":
        _scale_q_norm_last_channel(other)
    else:
        _perturb_rows(other, decision_rows(other), how)
    logits = DMSModel(other, NO_EVICT).forward_reference(ids).logits
    teacher = DMSModel(other, EVICT).forward_train(ids, noise_seed=0, teacher=True).logits
    dec = DMSModel(other, EVICT).forward_reference(ids).decisions

    assert (dec != base_dec).float().mean() > 0.2, "perturbing the neuron must move decisions"
    assert_close("reference logits", base_logits, logits, atol=1e-6)
    assert_close("teacher logits", base_teacher, teacher, atol=1e-6)


@pytest.mark.parametrize("name", arch_params(GROUPED))
def test_other_heads_channel_d_minus_1_contributes(name: str) -> None:
    """Only heads 0, g, 2g … lose channel d−1; head 1's channel d−1 is part of q·k."""
    hf = tiny_hf(name)
    d, g = _dims(hf)
    assert g > 1
    ids = random_ids(2, 12)
    base = DMSModel(hf, NO_EVICT).forward_reference(ids).logits
    other = clone(hf)
    _perturb_rows(other, [1 * d + d - 1], "negate")
    logits = DMSModel(other, NO_EVICT).forward_reference(ids).logits
    assert (logits - base).abs().max() > 1e-3


def test_qwen3_gqa_q_norm_last_channel_reaches_other_heads() -> None:
    """Counterpart of the q_norm case above: with g = 2, q_norm's channel d−1 also feeds
    head 1 (a non-decision head), so scaling it changes the attention output."""
    hf = tiny_hf("qwen3-qknorm")
    ids = random_ids(2, 12)
    base = DMSModel(hf, NO_EVICT).forward_reference(ids).logits
    other = clone(hf)
    _scale_q_norm_last_channel(other)
    assert (DMSModel(other, NO_EVICT).forward_reference(ids).logits - base).abs().max() > 1e-3


@pytest.mark.parametrize("name", arch_params(Q_ARCHS))
def test_project_layer_zeroes_neuron_before_and_after_rope(name: str) -> None:
    hf = tiny_hf(name)
    d, g = _dims(hf)
    ids = random_ids(2, 9)
    base = _layer_qkv(hf, ids, EVICT)
    # After RoPE: channel d−1 of the decision heads is exactly 0 (zeroed after RoPE) …
    assert torch.equal(base.q[:, :, ::g, d - 1], torch.zeros_like(base.q[:, :, ::g, d - 1]))
    if g > 1:  # … and the other heads keep theirs.
        assert (base.q[:, :, 1::g, d - 1].abs() > 0).all()
    plain = _layer_qkv(hf, ids, None)
    assert torch.equal(base.k, plain.k) and torch.equal(base.v, plain.v)

    how = "negate" if "qwen3" in name else "shift"
    other = clone(hf)
    _perturb_rows(other, decision_rows(other), how)
    moved = _layer_qkv(other, ids, EVICT)
    assert (moved.logits != base.logits).any()
    # Zeroed before RoPE: rotate-half would move −q[d−1]·sin into channel d/2−1 (t > 0).
    half = d // 2 - 1
    assert torch.equal(moved.q[:, 1:, ::g, half], base.q[:, 1:, ::g, half])
    assert torch.equal(moved.q, base.q)


@pytest.mark.parametrize("name", arch_params(Q_ARCHS))
def test_project_layer_matches_independent_computation(name: str) -> None:
    """q/k/v and z of layer 0, recomputed in float64 from the weights (RoPE from HF tables)."""
    hf = tiny_hf(name)
    cfg = hf.config
    d, g = _dims(hf)
    ids = random_ids(2, 7)
    out = _layer_qkv(hf, ids, EVICT)
    h = hf.model.embed_tokens(ids).detach()
    layer = hf.model.layers[0]
    attn = layer.self_attn
    x = _rms(h, layer.input_layernorm.weight, cfg.rms_norm_eps)
    q = _linear(x, attn.q_proj).view(2, 7, -1, d)
    k = _linear(x, attn.k_proj).view(2, 7, -1, d)
    v = _linear(x, attn.v_proj).view(2, 7, -1, d)
    if hasattr(attn, "q_norm"):
        q, k = (
            _rms(q, attn.q_norm.weight, cfg.rms_norm_eps),
            _rms(k, attn.k_norm.weight, cfg.rms_norm_eps),
        )
    z = q[:, :, ::g, d - 1] * EVICT.alpha_scale - EVICT.initial_alpha_offset
    q[:, :, ::g, d - 1] = 0
    cos, sin = rope_tables(hf, h, torch.arange(7).expand(2, -1))
    cos, sin = cos.double()[:, :, None], sin.double()[:, :, None]

    def rope(t):
        return t * cos + torch.cat([-t[..., d // 2 :], t[..., : d // 2]], -1) * sin

    q, k = rope(q), rope(k)
    q[:, :, ::g, d - 1] = 0
    assert_close("q", q, out.q, atol=1e-5)
    assert_close("k", k, out.k, atol=1e-5)
    assert_close("v", v, out.v, atol=1e-5)
    assert out.logits.shape == (2, 7, cfg.num_key_value_heads)
    assert_close("z", z, out.logits, atol=1e-3)


def _assert_same_decisions(name: str, z: torch.Tensor, decisions: torch.Tensor) -> None:
    """δ == (z > 0), ignoring entries within float noise of the threshold (asserted rare)."""
    safe = z.abs() > 1e-3
    assert safe.float().mean() > 0.95, f"{name}: too many logits near 0"
    assert torch.equal((z > 0)[safe], decisions[safe]), name
    assert 0 < decisions.float().mean() < 1, f"{name}: precondition: a mix of decisions"


@pytest.mark.parametrize("name", arch_params(Q_ARCHS))
def test_qneuron_decisions_recomputed_from_weights(name: str) -> None:
    hf = tiny_hf(name)
    ids = random_ids(2, 11)
    out = DMSModel(hf, EVICT).forward_reference(ids)
    assert out.decisions.dtype == torch.bool
    assert out.decisions.shape == (2, 2, 11, hf.config.num_key_value_heads)  # [L, B, T, H_kv]
    z = independent_logits(hf, hf.model.embed_tokens(ids).detach(), 0, EVICT)
    _assert_same_decisions(name, z, out.decisions[0])


@pytest.mark.parametrize("name", arch_params(["llama-gqa", "qwen2-bias", "qwen3-qknorm"]))
def test_adapter_decisions_recomputed_every_layer(name: str) -> None:
    """With w ≥ T nothing is evicted, so HF's hidden states are the residual stream."""
    dms = DMSConfig(window_size=64, initial_alpha_offset=0.0, separate_alpha=True)
    model = adapter_model(name, dms=dms)
    ids = random_ids(2, 11)
    out = model.forward_reference(ids)
    with torch.no_grad():
        hidden = model.hf(ids, output_hidden_states=True).hidden_states
    for layer_idx in range(model.arch.num_layers):
        z = independent_logits(model.hf, hidden[layer_idx], layer_idx, dms)
        _assert_same_decisions(f"{name} layer {layer_idx}", z, out.decisions[layer_idx])


# --------------------------------------------------------------------------- flavour A


@pytest.mark.parametrize("name", arch_params(GQA_ARCHS))
def test_zero_adapters_give_minus_b_and_base_model(name: str) -> None:
    dms = DMSConfig(window_size=1, initial_alpha_offset=5.0, separate_alpha=True)
    model = adapter_model(name, dms=dms, adapter_std=None)
    ids = random_ids(2, 10)
    for layer_idx in range(model.arch.num_layers):
        qkv = _layer_qkv(model.hf, ids, dms, layer_idx)
        assert torch.equal(qkv.logits, torch.full_like(qkv.logits, -5.0))
    out = model.forward_reference(ids)
    assert not out.decisions.any()
    with torch.no_grad():
        hf_logits = model.hf(ids).logits
    assert torch.equal(out.logits, hf_logits)


def test_adapter_flavour_does_not_zero_q() -> None:
    """In flavour A the Q/K/V path is exactly the base model's (no channel zeroing)."""
    dms = DMSConfig(window_size=2, separate_alpha=True)
    model = adapter_model("llama-gqa", dms=dms)
    ids = random_ids(2, 8)
    with_dms = _layer_qkv(model.hf, ids, dms)
    plain = _layer_qkv(model.hf, ids, None)
    assert torch.equal(with_dms.q, plain.q)
    assert (plain.q[..., -1].abs() > 0).all()
    assert plain.logits is None and with_dms.logits is not None


# --------------------------------------------------------------------------- alpha_per


@pytest.mark.parametrize(
    "flavour", [pytest.param("qneuron", id="qneuron"), pytest.param("adapter", id="adapter")]
)
def test_alpha_per_layer_uses_head_zero(flavour: str) -> None:
    per_head = EVICT.replace(separate_alpha=flavour == "adapter")
    per_layer = per_head.replace(alpha_per="layer")
    if flavour == "adapter":
        model = adapter_model("qwen3-qknorm", dms=per_head)
    else:
        model = DMSModel(tiny_hf("qwen3-qknorm"), per_head)
    ids = random_ids(2, 12)
    head = model.forward_reference(ids).decisions  # [L, B, T, H_kv]
    assert (head[..., 1] != head[..., 0]).any(), "precondition: heads disagree per head"
    model.dms = per_layer
    layer = model.forward_reference(ids).decisions
    for h in range(layer.shape[-1]):
        assert torch.equal(layer[0, ..., h], head[0, ..., 0])  # layer 0: same input
        assert torch.equal(layer[..., h], layer[..., 0])
    train = model.forward_train(ids, noise_seed=3).decisions
    for h in range(train.shape[-1]):
        assert torch.equal(train[..., h], train[..., 0])


# --------------------------------------------------------------------------- gating maths


def test_hard_decisions_threshold_strictly_at_zero() -> None:
    z = torch.tensor([-1.0, -1e-9, 0.0, 1e-9, 3.0])
    assert hard_decisions(z).tolist() == [False, False, False, True, True]


def test_soft_decisions_straight_through() -> None:
    z = torch.tensor([[[-2.0, -0.05], [0.05, 3.0]]], requires_grad=True)  # [1, 2, 2]
    tau = 0.5
    soft = soft_decisions(z, None, tau)
    assert_close("u", (z / tau).detach(), soft.u.detach(), atol=0)
    # Forward value is the hard 0/1 decision …
    assert_close("hard", (z > 0).float(), soft.hard.detach(), atol=1e-6)
    # … and the gradient is that of p = σ(z/τ).
    soft.hard.sum().backward()
    p = torch.sigmoid(z.detach() / tau)
    assert_close("grad", p * (1 - p) / tau, z.grad, atol=1e-7)


def test_soft_decisions_with_noise_and_layer_mode() -> None:
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(2, 5, 3, generator=gen)
    noise = torch.randn(2, 5, 3, generator=gen)
    soft = soft_decisions(z, noise, 0.1)
    assert torch.equal(soft.hard.detach() > 0.5, (z + noise) > 0)
    layer = soft_decisions(z, noise, 0.1, alpha_per="layer")
    for h in range(3):  # head 0's logit and head 0's noise for every head
        assert torch.equal(layer.u[..., h], ((z + noise)[..., 0]) / 0.1)


def test_logistic_noise_is_seeded_and_logistic() -> None:
    a = logistic_noise((200_000,), torch.Generator().manual_seed(7), torch.device("cpu"))
    b = logistic_noise((200_000,), torch.Generator().manual_seed(7), torch.device("cpu"))
    c = logistic_noise((200_000,), torch.Generator().manual_seed(8), torch.device("cpu"))
    assert a.dtype == torch.float32 and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.isfinite(a).all()
    # G1 − G2 of two Gumbel(0, 1) is Logistic(0, 1): mean 0, variance π²/3, P(ε > 5) = σ(−5).
    assert abs(a.mean().item()) < 0.02
    assert a.var().item() == pytest.approx(math.pi**2 / 3, rel=0.03)
    assert (a > 5).float().mean().item() == pytest.approx(1 / (1 + math.exp(5)), rel=0.15)
