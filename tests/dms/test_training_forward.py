"""`DMSModel.forward_train`: soft mask vs the hard reference, gradients, noise, eviction stats."""

from __future__ import annotations

import pytest
import torch

from agentrt.dms import DMSConfig, DMSModel
from agentrt.dms.adapters import ADAPTER_MARKER, base_parameter_names

from .tiny_models import adapter_model, assert_close, decision_rows, random_ids, tiny_hf


def _model(flavour: str, dms: DMSConfig, name: str = "qwen3-qknorm") -> DMSModel:
    if flavour == "adapter":
        return adapter_model(name, dms=dms.replace(separate_alpha=True))
    return DMSModel(tiny_hf(name), dms)


FLAVOURS = [pytest.param("qneuron", id="qneuron"), pytest.param("adapter", id="adapter")]


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize(
    "offset",
    [
        pytest.param(-100.0, id="rate-high"),
        pytest.param(0.0, id="rate-mid"),
        pytest.param(100.0, id="rate-low"),
    ],
)
def test_tiny_tau_no_noise_equals_hard_reference(flavour: str, offset: float) -> None:
    """τ → 0, noise off: log(1 − σ(z/τ)) is 0 / −huge, i.e. log of the hard mask."""
    dms = DMSConfig(window_size=2, initial_alpha_offset=offset, tau=1e-4)
    model = _model(flavour, dms)
    ids = random_ids(2, 14, seed=1)
    ref = model.forward_reference(ids)
    rate = ref.decisions.float().mean().item()
    assert 0.02 < rate < 0.98, f"precondition: a mix of decisions, got rate {rate:.2f}"
    out = model.forward_train(ids, noise_seed=None)
    assert torch.equal(out.decisions.detach() > 0.5, ref.decisions)
    assert_close("train vs reference logits", ref.logits, out.logits.detach(), atol=1e-5)
    # And the soft mask really evicts: the reference differs from dense attention.
    model_dense = DMSModel(model.hf, model.dms.replace(disable_eviction=True))
    dense = model_dense.forward_reference(ids).logits
    assert (dense - ref.logits).abs().max() > 1e-3


def test_moderate_tau_is_not_the_hard_mask() -> None:
    """Sanity for the test above: at τ = 10 the soft mask differs from the hard one."""
    dms = DMSConfig(window_size=2, initial_alpha_offset=0.0, tau=10.0)
    model = _model("qneuron", dms)
    ids = random_ids(2, 14, seed=1)
    ref = model.forward_reference(ids).logits
    out = model.forward_train(ids, noise_seed=None).logits.detach()
    assert (ref - out).abs().max() > 1e-3


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_eviction_fraction_is_mean_of_hard_decisions(flavour: str) -> None:
    model = _model(flavour, DMSConfig(window_size=2, initial_alpha_offset=0.0))
    ids = random_ids(3, 10)
    out = model.forward_train(ids, noise_seed=11)
    dec = out.decisions.detach()
    arch = model.arch
    assert dec.shape == (arch.num_layers, 3, 10, arch.num_kv_heads)  # [L, B, T, H_kv]
    assert torch.allclose(dec, dec.round(), atol=1e-6), "straight-through values are 0/1"
    frac = out.eviction_fraction.detach()
    assert frac.shape == (arch.num_layers, arch.num_kv_heads)
    assert ((frac >= 0) & (frac <= 1)).all()
    assert_close("fraction", dec.round().mean(dim=(1, 2)), frac, atol=1e-6)
    assert 0 < frac.mean() < 1, "precondition: some but not all tokens marked"


def test_eviction_fraction_ignores_padding() -> None:
    model = _model("adapter", DMSConfig(window_size=2, initial_alpha_offset=0.0))
    ids = random_ids(2, 9)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, :4] = 0
    out = model.forward_train(ids, mask, noise_seed=2)
    dec = out.decisions.detach().round()  # [L, B, T, H]
    valid = mask.bool()
    expected = torch.stack([dec[layer][valid].mean(dim=0) for layer in range(dec.shape[0])])
    assert_close("fraction over valid tokens", expected, out.eviction_fraction.detach(), atol=1e-6)


def test_gradients_reach_adapters_and_base_stays_frozen() -> None:
    dms = DMSConfig(window_size=2, initial_alpha_offset=0.0, tau=1.0, separate_alpha=True)
    model = adapter_model("qwen3-qknorm", dms=dms)
    frozen = set(base_parameter_names(model.hf))
    assert frozen and all(ADAPTER_MARKER not in n for n in frozen)
    for name, param in model.hf.named_parameters():
        param.requires_grad_(name not in frozen)
    out = model.forward_train(random_ids(2, 12), noise_seed=0)
    (out.eviction_fraction.mean() + out.logits.sum()).backward()
    for name, param in model.hf.named_parameters():
        if ADAPTER_MARKER in name:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name


def test_compression_loss_alone_reaches_adapters_at_init() -> None:
    """From NVIDIA's start point (zero adapters, s = 100, b = 5, τ = 0.1) the eviction
    fraction alone has a non-zero straight-through gradient on every dms_proj_alpha."""
    model = adapter_model("llama-gqa", dms=DMSConfig(window_size=2), adapter_std=None)
    for name, param in model.hf.named_parameters():
        param.requires_grad_(ADAPTER_MARKER in name)
    out = model.forward_train(random_ids(2, 12), noise_seed=0)
    out.eviction_fraction.mean().backward()
    for layer in model.hf.model.layers:
        grad = layer.self_attn.dms_proj_alpha.weight.grad
        assert grad is not None and grad.abs().sum() > 0


def test_gradients_reach_qneuron_rows_through_decisions() -> None:
    """Flavour Q: the decision rows of q_proj never enter q·k, so their gradient from the
    eviction fraction can only come through the straight-through decisions."""
    dms = DMSConfig(window_size=2, initial_alpha_offset=0.0, alpha_scale=1.0, tau=1.0)
    hf = tiny_hf("llama-gqa")
    model = DMSModel(hf, dms)
    rows = decision_rows(hf)
    out = model.forward_train(random_ids(2, 12), noise_seed=0)
    out.eviction_fraction.mean().backward()
    for layer in hf.model.layers:
        grad = layer.self_attn.q_proj.weight.grad
        assert grad is not None and grad[rows].abs().sum() > 0

    # Through the teacher pass (eviction off) the same rows get exactly zero gradient.
    hf.zero_grad(set_to_none=True)
    teacher = model.forward_train(random_ids(2, 12), noise_seed=0, teacher=True)
    teacher.logits.sum().backward()
    for layer in hf.model.layers:
        grad = layer.self_attn.q_proj.weight.grad
        assert torch.equal(grad[rows], torch.zeros_like(grad[rows]))
        assert grad.abs().sum() > 0


def test_soft_mask_gradient_reaches_decisions_via_logits() -> None:
    """The attention mask uses the soft u: the LM loss alone trains the adapters."""
    dms = DMSConfig(window_size=1, initial_alpha_offset=0.0, tau=1.0, separate_alpha=True)
    model = adapter_model("llama-gqa", dms=dms)
    for name, param in model.hf.named_parameters():
        param.requires_grad_(ADAPTER_MARKER in name)
    out = model.forward_train(random_ids(2, 10), noise_seed=None)
    out.logits.pow(2).sum().backward()
    for layer in model.hf.model.layers:
        assert layer.self_attn.dms_proj_alpha.weight.grad.abs().sum() > 0


def test_noise_seed_determinism() -> None:
    """z = 0 exactly (zero adapters, b = 0): the noise alone decides."""
    dms = DMSConfig(window_size=2, initial_alpha_offset=0.0, separate_alpha=True)
    model = adapter_model("llama-gqa", dms=dms, adapter_std=None)
    ids = random_ids(2, 16)
    rng_before = torch.get_rng_state()
    a = model.forward_train(ids, noise_seed=123)
    b = model.forward_train(ids, noise_seed=123)
    c = model.forward_train(ids, noise_seed=124)
    assert torch.equal(torch.get_rng_state(), rng_before), "the global RNG must not move"
    assert torch.equal(a.logits, b.logits) and torch.equal(a.decisions, b.decisions)
    assert (a.decisions != c.decisions).float().mean() > 0.2
    assert (a.logits - c.logits).abs().max() > 1e-4
    frac = a.eviction_fraction.mean().item()
    assert 0.3 < frac < 0.7, f"P(ε > 0) = 1/2, got {frac:.2f}"
    none = model.forward_train(ids, noise_seed=None)
    assert not none.decisions.detach().any(), "no noise and z = 0: σ(0) = ½ is not > ½"


@pytest.mark.parametrize(
    "dms",
    [
        pytest.param(DMSConfig(window_size=1, initial_alpha_offset=-50.0), id="teacher-switch"),
        pytest.param(
            DMSConfig(window_size=1, initial_alpha_offset=-50.0, disable_eviction=True),
            id="disable_eviction",
        ),
    ],
)
def test_teacher_and_disabled_eviction_report_nothing(dms: DMSConfig) -> None:
    """Nearly every token marked, yet with eviction off the logits equal dense attention."""
    model = _model("adapter", dms)
    ids = random_ids(2, 9)
    out = model.forward_train(ids, noise_seed=0, teacher=not dms.disable_eviction)
    assert out.decisions is None and out.eviction_fraction is None
    with torch.no_grad():
        hf_logits = model.hf(ids).logits
    assert_close("teacher vs HF", hf_logits, out.logits, atol=1e-5)
    student = model.forward_train(ids, noise_seed=0, teacher=False)
    if not dms.disable_eviction:
        assert student.eviction_fraction.mean() > 0.5
        assert (student.logits - hf_logits).abs().max() > 1e-3
