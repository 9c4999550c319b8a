"""With eviction off, the DMS forwards reproduce the Hugging Face model's own logits."""

from __future__ import annotations

import pytest
import torch

from agentrt.dms import DMSConfig, DMSModel, add_adapters
from agentrt.errors import ModelLoadError

from .tiny_models import ALL_ARCHS, adapter_model, arch_params, assert_close, random_ids, tiny_hf

SEQ_LENS = [pytest.param(1, id="T1"), pytest.param(7, id="T7"), pytest.param(16, id="T16")]


def _hf_logits(hf, ids: torch.Tensor, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return hf(ids, **kwargs).logits


@pytest.mark.parametrize("seq", SEQ_LENS)
@pytest.mark.parametrize("name", arch_params(ALL_ARCHS))
def test_plain_and_teacher_match_hf(name: str, seq: int) -> None:
    hf = tiny_hf(name)
    ids = random_ids(2, seq, seed=seq)
    ref = _hf_logits(hf, ids)
    model = DMSModel(hf)
    reference = model.forward_reference(ids)
    assert reference.decisions is None
    assert_close(f"{name} reference", ref, reference.logits, atol=1e-5)
    # An evicting q-neuron config in teacher mode keeps the channel zeroing, so the teacher
    # switch is checked on the plain model and on the adapter flavour (below).
    train = model.forward_train(ids, noise_seed=0, teacher=True)
    assert train.decisions is None
    assert_close(f"{name} train teacher", ref, train.logits.detach(), atol=1e-5)


@pytest.mark.parametrize("name", arch_params(ALL_ARCHS))
def test_zero_adapters_equal_hf_exactly(name: str) -> None:
    """Flavour A with zero adapters (z = −b < 0, no eviction) is bit-identical to HF (fp32)."""
    hf = tiny_hf(name)
    ids = random_ids(2, 11)
    ref = _hf_logits(hf, ids)
    assert torch.equal(DMSModel(hf).forward_reference(ids).logits, ref)
    model = add_adapters(DMSModel(hf), DMSConfig(window_size=1))
    assert model.dms.separate_alpha and model.evicting
    out = model.forward_reference(ids)
    assert not out.decisions.any()
    assert torch.equal(out.logits, ref)
    train = model.forward_train(ids, noise_seed=None)  # no noise: σ(−b/τ) < ½, nothing marked
    assert not (train.decisions > 0.5).any()
    teacher = model.forward_train(ids, noise_seed=0, teacher=True)
    assert torch.equal(teacher.logits, ref)


@pytest.mark.parametrize("name", arch_params(["llama-gqa", "qwen2-bias", "qwen3-qknorm"]))
def test_adapter_flavour_with_eviction_disabled_matches_hf(name: str) -> None:
    """Random (non-zero) adapters but dms_disable_eviction: dense, identical to HF."""
    hf = tiny_hf(name)
    dms = DMSConfig(window_size=1, initial_alpha_offset=-50.0, disable_eviction=True)
    model = add_adapters(DMSModel(hf), dms)
    with torch.no_grad():
        for layer in hf.model.layers:
            layer.self_attn.dms_proj_alpha.weight.normal_(
                0, 1.0, generator=torch.Generator().manual_seed(1)
            )
    ids = random_ids(2, 9)
    ref = _hf_logits(hf, ids)
    out = model.forward_reference(ids)
    assert out.decisions is None
    assert_close("reference", ref, out.logits, atol=1e-5)
    assert_close(
        "teacher", ref, model.forward_train(ids, noise_seed=0, teacher=True).logits, atol=1e-5
    )


@pytest.mark.parametrize("name", arch_params(ALL_ARCHS))
def test_float64_parity(name: str) -> None:
    """In float64 the same forward agrees to ~1e-12: no formula differs, only rounding."""
    hf = tiny_hf(name, dtype=torch.float64)
    ids = random_ids(2, 7)
    ref = _hf_logits(hf, ids)
    assert ref.dtype == torch.float64
    assert_close(name, ref, DMSModel(hf).forward_reference(ids).logits, atol=1e-10)


@pytest.mark.parametrize(
    "name", arch_params(["llama-gqa", "llama-tied", "qwen2-bias", "qwen3-qknorm"])
)
def test_left_padded_batch_matches_hf(name: str) -> None:
    hf = tiny_hf(name)
    ids = random_ids(3, 10, seed=4)
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[0, :3] = 0
    mask[2, :7] = 0
    valid = mask.bool()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    ref = _hf_logits(hf, ids, attention_mask=mask, position_ids=positions)
    model = add_adapters(DMSModel(hf), DMSConfig(window_size=2))  # zero adapters: no eviction
    plain = DMSModel(hf)
    for label, logits in (
        ("plain reference", plain.forward_reference(ids, mask).logits),
        ("plain teacher", plain.forward_train(ids, mask, noise_seed=0, teacher=True).logits),
        ("adapter reference", model.forward_reference(ids, mask).logits),
        ("adapter train", model.forward_train(ids, mask, noise_seed=None).logits),
    ):
        logits = logits.detach()
        assert torch.isfinite(logits).all(), label
        assert_close(label, ref[valid], logits[valid], atol=1e-5)
        # Each row equals the same tokens run alone, unpadded.
        for row in range(3):
            alone = _hf_logits(hf, ids[row : row + 1, valid[row]])
            assert_close(f"{label} row {row}", alone[0], logits[row, valid[row]], atol=1e-5)


def test_left_padded_batch_with_eviction_matches_rows_alone() -> None:
    """Padding does not change the DMS rule: a padded row equals the row run alone,
    decisions included (the window counts tokens, not padded positions)."""
    dms = DMSConfig(window_size=2, initial_alpha_offset=0.0, separate_alpha=True)
    model = adapter_model("qwen3-qknorm", dms=dms)
    ids = random_ids(3, 12, seed=4)
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[0, :3] = 0
    mask[2, :8] = 0
    valid = mask.bool()
    ref = model.forward_reference(ids, mask)
    train = model.forward_train(ids, mask, noise_seed=None)
    assert ref.decisions.any()
    for row in range(3):
        alone_ids = ids[row : row + 1, valid[row]]
        alone = model.forward_reference(alone_ids)
        assert torch.equal(alone.decisions[:, 0], ref.decisions[:, row, valid[row]])
        assert_close(
            f"reference row {row}", alone.logits[0], ref.logits[row, valid[row]], atol=1e-5
        )
        alone_train = model.forward_train(alone_ids, noise_seed=None).logits.detach()
        got = train.logits.detach()[row, valid[row]]
        assert_close(f"train row {row}", alone_train[0], got, atol=1e-5)


def test_llama3_rope_scaling_is_in_effect() -> None:
    """The llama3 case is meaningful: its scaled RoPE changes logits, and DMS follows it."""
    scaled = tiny_hf("llama3-rope")
    unscaled = tiny_hf("llama-gqa")  # same seed, same weights, default RoPE
    ids = random_ids(1, 16)
    a, b = _hf_logits(scaled, ids), _hf_logits(unscaled, ids)
    assert (a - b).abs().max() > 1e-3
    assert_close("scaled", a, DMSModel(scaled).forward_reference(ids).logits, atol=1e-5)


@pytest.mark.parametrize(
    "rope",
    [
        pytest.param(
            {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4}, id="yarn"
        ),
        pytest.param({"rope_type": "dynamic", "factor": 4.0}, id="dynamic"),
        pytest.param({"rope_type": "linear", "factor": 4.0}, id="linear"),
    ],
)
def test_rope_scaling_variants_match_hf(rope: dict) -> None:
    """Other rope_scaling types HF supports (Qwen3 ships YaRN); T > max positions for dynamic."""
    hf = tiny_hf("qwen3-qknorm", rope_scaling=rope, max_position_embeddings=16)
    ids = random_ids(2, 24)
    ref = _hf_logits(hf, ids)
    assert (ref - _hf_logits(tiny_hf("qwen3-qknorm"), ids)).abs().max() > 1e-3
    assert_close(rope["rope_type"], ref, DMSModel(hf).forward_reference(ids).logits, atol=1e-5)
    assert_close(
        f"{rope['rope_type']} teacher",
        ref,
        DMSModel(hf).forward_train(ids, noise_seed=0, teacher=True).logits.detach(),
        atol=1e-5,
    )


def test_qneuron_config_zeroes_the_channel_even_when_disabled() -> None:
    """NVIDIA §1.5: a disabled q-neuron model still zeroes channel d−1, so it is not the base."""
    hf = tiny_hf("llama-gqa")
    ids = random_ids(2, 8)
    model = DMSModel(hf, DMSConfig(disable_eviction=True))
    assert (model.forward_reference(ids).logits - _hf_logits(hf, ids)).abs().max() > 1e-4


def test_adapter_config_without_adapters_is_refused() -> None:
    with pytest.raises(ModelLoadError, match="add_adapters"):
        DMSModel(tiny_hf("llama-gqa"), DMSConfig(separate_alpha=True))


@pytest.mark.parametrize(
    "overrides, needle",
    [
        pytest.param(
            {"layer_types": ["full_attention", "sliding_attention"], "sliding_window": 8},
            "sliding",
            id="qwen3-sliding-layer",
        ),
    ],
)
def test_unsupported_hf_model_is_refused(overrides: dict, needle: str) -> None:
    hf = tiny_hf("qwen3-qknorm", **overrides)
    with pytest.raises(ModelLoadError, match=needle):
        DMSModel(hf)


def test_serving_shortcuts_equal_the_hf_modules() -> None:
    """rms_norm / linear / mlp / signed RoPE give bit-identical results to what they replace."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

    from agentrt.dms.projections import (
        apply_rope,
        apply_signed_rope,
        linear,
        mlp,
        rms_norm,
        signed_rope,
    )

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=96)
    norm, block = LlamaRMSNorm(64, eps=1e-5), LlamaMLP(cfg)
    norm.weight.data.normal_()
    proj = torch.nn.Linear(64, 32, bias=True)
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        assert torch.equal(rms_norm(norm, x), norm(x))
        assert torch.equal(linear(proj, x), proj(x))
        assert torch.equal(mlp(block, x), block(x))
        assert torch.equal(rms_norm(norm, x.double()), norm(x.double()))  # the module itself
    cos, sin = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    qk = torch.randn(2, 5, 6, 16)
    assert torch.equal(apply_signed_rope(qk, *signed_rope(cos, sin)), apply_rope(qk, cos, sin))
    hooked = torch.nn.Linear(64, 32)
    hooked.register_forward_hook(lambda m, i, o: o * 2)
    with torch.no_grad():
        assert torch.equal(linear(hooked, x), hooked(x))  # a hook keeps the module call
