"""Shipped DMS adapter folders: `load_model(adapters=...)`, and the default model serving with them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from agentrt.dms import DMSConfig, load_model
from agentrt.errors import ModelLoadError
from agentrt.models.resolve import load_resolved
from tests.models.conftest import TINY

HIDDEN, KV_HEADS, LAYERS = 64, 2, 2


@pytest.fixture(scope="module")
def plain_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny plain llama (hidden 64, 2 KV heads), saved without any DMS."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=97,
        hidden_size=HIDDEN,
        intermediate_size=96,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=512,
    )
    out = tmp_path_factory.mktemp("plain")
    AutoModelForCausalLM.from_config(cfg).save_pretrained(out)
    return out


def write_adapters(folder: Path, *, kv_heads: int = KV_HEADS, **config: object) -> Path:
    """An adapter folder as the retrofit writes it: random adapters, window 4, offset 0."""
    gen = torch.Generator().manual_seed(1)
    tensors = {}
    for i in range(LAYERS):
        prefix = f"model.layers.{i}.self_attn"
        tensors[f"{prefix}.dms_proj_alpha_norm.weight"] = 1 + 0.1 * torch.randn(
            HIDDEN, generator=gen
        )
        tensors[f"{prefix}.dms_proj_alpha.weight"] = torch.randn(kv_heads, HIDDEN, generator=gen)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapters.safetensors"))
    dms = {
        "dms_separate_alpha": True,
        "dms_window_size": 4,
        "dms_alpha_scale": 100.0,
        "dms_initial_alpha_offset": 0.0,
        "dms_alpha_per": "head",
        "dms_tau": 0.1,
        "measured_cr": 6.5,
    }
    (folder / "dms_config.json").write_text(json.dumps({**dms, **config}))
    return folder


def decisions(model, n: int = 40) -> torch.Tensor:
    """Hard eviction decisions of the model on a fixed sequence, [L, 1, T, H_kv]."""
    ids = torch.arange(3, 3 + n).remainder(90)[None]
    return model.forward_reference(ids).decisions


def test_an_adapter_folder_is_attached_and_its_tensors_loaded(
    plain_folder: Path, tmp_path: Path
) -> None:
    adapters = write_adapters(tmp_path / "adapters")
    model = load_model(plain_folder, adapters=adapters, tokenizer=False)
    assert model.dms.separate_alpha and model.dms.window_size == 4 and model.evicting
    attn = model.hf.model.layers[1].self_attn
    from safetensors.torch import load_file

    shipped = load_file(str(adapters / "adapters.safetensors"))
    assert torch.equal(
        attn.dms_proj_alpha.weight, shipped["model.layers.1.self_attn.dms_proj_alpha.weight"]
    )
    zero = load_model(
        plain_folder,
        dms=DMSConfig(separate_alpha=True, window_size=4, initial_alpha_offset=0.0),
        tokenizer=False,
    )
    assert decisions(zero).sum() == 0  # zero adapters: z = 0, never evict
    assert 0 < decisions(model).float().mean() < 1  # the shipped adapters decide


def test_adapters_of_the_wrong_shape_are_refused_clearly(
    plain_folder: Path, tmp_path: Path
) -> None:
    adapters = write_adapters(tmp_path / "adapters", kv_heads=KV_HEADS + 1)
    with pytest.raises(ModelLoadError, match="do not fit the model") as err:
        load_model(plain_folder, adapters=adapters, tokenizer=False)
    assert "wrong shape" in str(err.value) and "(3, 64) (expected (2, 64))" in str(err.value)
    assert "num_key_value_heads" in err.value.hint


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dms_separate_alpha": False}, "dms_separate_alpha must be true"),
        ({"dms_windw_size": 4}, "unknown DMS config keys: dms_windw_size"),
    ],
)
def test_a_bad_adapter_config_is_refused(
    plain_folder: Path, tmp_path: Path, change: dict, message: str
) -> None:
    adapters = write_adapters(tmp_path / "adapters", **change)
    with pytest.raises(ModelLoadError, match=message):
        load_model(plain_folder, adapters=adapters, tokenizer=False)


def test_a_missing_adapter_folder_is_refused(plain_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="cannot read the DMS adapters"):
        load_model(plain_folder, adapters=tmp_path / "nowhere", tokenizer=False)


@pytest.fixture
def shipped(installed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Pretend this install ships adapters for the tiny known model."""
    folder = write_adapters(tmp_path / "shipped" / TINY, kv_heads=2)
    monkeypatch.setattr(
        "agentrt.models.resolve.shipped_adapters", lambda name: folder if name == TINY else None
    )
    return folder


def test_a_known_model_serves_with_its_shipped_adapters_and_dense_when_off(
    shipped: Path, agentrt_home: Path
) -> None:
    from transformers import AutoModelForCausalLM

    model = load_resolved(TINY, progress=False)
    assert model.evicting and model.dms.window_size == 4
    assert model.source_dir == agentrt_home / "models" / TINY
    dense = load_resolved(TINY, dms="off", progress=False)
    assert dense.dms is None and not dense.evicting
    ids = torch.tensor([[1, 40, 50, 60, 70, 80, 2]])
    hf = AutoModelForCausalLM.from_pretrained(dense.source_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        assert torch.equal(dense.forward_reference(ids).logits, hf(ids).logits)
    # the prepared folder's path is the known model too (what a saved session records)
    again = load_resolved(str(model.source_dir), progress=False)
    assert again.evicting and again.dms == model.dms


def test_unknown_dms_modes_are_refused(shipped: Path) -> None:
    from agentrt.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown DMS mode 'dense'"):
        load_resolved(TINY, dms="dense", progress=False)


def test_shipped_adapters_with_a_lora_merge_it_and_say_so(
    installed: Path, agentrt_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shipped folder with a LoRA: served with it merged (weights = base + scale · B A, the
    fingerprint names the delta), dense without it, and `agentrt models ls` says LoRA r2."""
    from safetensors.torch import load_file

    from agentrt.models.catalog import adapter_summary

    folder = write_adapters(
        tmp_path / "shipped" / TINY, kv_heads=2, lora={"rank": 2, "scale": 0.5, "targets": []}
    )
    tensors = load_file(str(folder / "adapters.safetensors"))
    gen = torch.Generator().manual_seed(2)
    outs = {"q_proj": HIDDEN, "k_proj": 32, "v_proj": 32, "o_proj": HIDDEN}
    ins = {"q_proj": HIDDEN, "k_proj": HIDDEN, "v_proj": HIDDEN, "o_proj": HIDDEN}
    for i in range(LAYERS):
        for name, out_f in outs.items():
            stem = f"model.layers.{i}.self_attn.{name}.dms_lora_"
            tensors[stem + "a"] = torch.randn(2, ins[name], generator=gen)
            tensors[stem + "b"] = torch.randn(out_f, 2, generator=gen)
    save_file(tensors, str(folder / "adapters.safetensors"))
    for target in (
        "agentrt.models.resolve.shipped_adapters",
        "agentrt.models.catalog.shipped_adapters",
    ):
        monkeypatch.setattr(target, lambda name: folder if name == TINY else None)

    model = load_resolved(TINY, progress=False)
    dense = load_resolved(TINY, dms="off", progress=False)
    assert model.weight_delta and dense.weight_delta is None
    stem = "model.layers.1.self_attn.k_proj.dms_lora_"
    want = dense.hf.model.layers[1].self_attn.k_proj.weight + 0.5 * (
        tensors[stem + "b"] @ tensors[stem + "a"]
    )
    torch.testing.assert_close(
        model.hf.model.layers[1].self_attn.k_proj.weight, want, atol=1e-6, rtol=0
    )
    assert adapter_summary(TINY)[0] == "DMS adapters + LoRA r2 (shipped)"


def test_a_partial_dms_override_changes_only_its_fields(shipped: Path) -> None:
    """A task file's `dms: {window_size: 9}` keeps the shipped adapters and their flavour
    (it used to build a whole default config and was refused as the other flavour)."""
    model = load_resolved(TINY, dms={"window_size": 9}, progress=False)
    own = load_resolved(TINY, progress=False)
    assert model.dms == own.dms.replace(window_size=9) and model.dms.separate_alpha
    assert torch.equal(
        model.hf.model.layers[0].self_attn.dms_proj_alpha.weight,
        own.hf.model.layers[0].self_attn.dms_proj_alpha.weight,
    )
    from agentrt.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown DMS config keys"):
        load_resolved(TINY, dms={"window": 9}, progress=False)
