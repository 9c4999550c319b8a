"""`load_model` and `save_pretrained`: round trips, NVIDIA-style folders, flavour checks, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    GPT2Config,
    MistralConfig,
    MixtralConfig,
    PhiConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

from agentrt.dms import DMSConfig, DMSModel, add_adapters, load_model
from agentrt.errors import ModelLoadError

from .tiny_models import VOCAB, adapter_model, random_ids, tiny_hf

DMS_KEYS = {
    "dms_alpha_scale",
    "dms_initial_alpha_offset",
    "dms_window_size",
    "dms_separate_alpha",
    "dms_alpha_per",
    "dms_tau",
    "dms_disable_eviction",
    "dms_chunked_prefill",
}
HF_AUTO_MAP = {
    "AutoConfig": "configuration_qwen3_dms.Qwen3Config",
    "AutoModelForCausalLM": "modeling_qwen3_dms.Qwen3ForCausalLM",
}
MO_AUTO_MAP = {
    "AutoConfig": "configuration_qwen3_dms.Qwen3ConfigDMS",
    "AutoModel": "modeling_qwen3_dms.Qwen3ModelDMS",
    "AutoModelForCausalLM": "modeling_qwen3_dms.Qwen3ForCausalLMDMS",
}


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over 'w0' … 'w96' (no files, no network)."""
    vocab = {f"w{i}": i for i in range(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0")


def read_config(path: Path) -> dict:
    return json.loads((path / "config.json").read_text())


def write_config(path: Path, cfg: dict) -> None:
    (path / "config.json").write_text(json.dumps(cfg, indent=2))


def all_tensors(path: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("*.safetensors")):
        out.update(load_file(file))
    return out


def assert_same_outputs(a: DMSModel, b: DMSModel, ids: torch.Tensor) -> None:
    ra, rb = a.forward_reference(ids), b.forward_reference(ids)
    assert torch.equal(ra.logits, rb.logits)
    assert (ra.decisions is None) == (rb.decisions is None)
    if ra.decisions is not None:
        assert torch.equal(ra.decisions, rb.decisions)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    "name", [pytest.param("qwen3-qknorm", id="qwen3"), pytest.param("llama-tied", id="llama-tied")]
)
def test_round_trip_plain(tmp_path: Path, name: str) -> None:
    model = DMSModel(tiny_hf(name), tokenizer=tiny_tokenizer())
    model.save_pretrained(tmp_path)
    assert not any(k.startswith("dms_") for k in read_config(tmp_path))
    loaded = load_model(tmp_path)
    assert loaded.dms is None and not loaded.evicting
    assert_same_outputs(model, loaded, random_ids(2, 9))
    assert loaded.tokenizer is not None
    assert loaded.tokenizer("w3 w50 w96").input_ids == [3, 50, 96]


def test_round_trip_qneuron(tmp_path: Path) -> None:
    dms = DMSConfig(window_size=3, initial_alpha_offset=0.0, alpha_per="layer", tau=0.2)
    model = DMSModel(tiny_hf("qwen3-qknorm"), dms)
    model.save_pretrained(tmp_path)
    cfg = read_config(tmp_path)
    assert {k for k in cfg if k.startswith("dms_")} == DMS_KEYS
    assert cfg["dms_separate_alpha"] is False and cfg["dms_window_size"] == 3
    assert cfg["dms_alpha_per"] == "layer" and cfg["dms_tau"] == 0.2
    assert not any("dms_proj_alpha" in k for k in all_tensors(tmp_path))
    loaded = load_model(tmp_path, tokenizer=False)
    assert loaded.dms == dms
    ids = random_ids(2, 12)
    assert_same_outputs(model, loaded, ids)
    assert loaded.forward_reference(ids).decisions.any()


@pytest.mark.parametrize(
    "name", [pytest.param("qwen3-qknorm", id="qwen3"), pytest.param("qwen2-bias", id="qwen2")]
)
def test_round_trip_adapter(tmp_path: Path, name: str) -> None:
    dms = DMSConfig(window_size=2, initial_alpha_offset=0.0, separate_alpha=True)
    model = adapter_model(name, dms=dms)
    model.save_pretrained(tmp_path)
    cfg = read_config(tmp_path)
    assert {k for k in cfg if k.startswith("dms_")} == DMS_KEYS
    assert cfg["dms_separate_alpha"] is True
    tensors = all_tensors(tmp_path)
    arch = model.arch
    for i in range(arch.num_layers):  # NVIDIA's names and shapes
        proj = tensors[f"model.layers.{i}.self_attn.dms_proj_alpha.weight"]
        norm = tensors[f"model.layers.{i}.self_attn.dms_proj_alpha_norm.weight"]
        assert proj.shape == (arch.num_kv_heads, arch.hidden_size)
        assert norm.shape == (arch.hidden_size,)
        assert torch.equal(proj, model.hf.model.layers[i].self_attn.dms_proj_alpha.weight)
    loaded = load_model(tmp_path)
    assert loaded.dms == dms
    for i in range(arch.num_layers):
        attn = loaded.hf.model.layers[i].self_attn
        assert torch.equal(
            attn.dms_proj_alpha.weight, tensors[f"model.layers.{i}.self_attn.dms_proj_alpha.weight"]
        )
    ids = random_ids(2, 12)
    assert_same_outputs(model, loaded, ids)
    assert loaded.forward_reference(ids).decisions.any()


def test_load_dtype_applies_to_adapters(tmp_path: Path) -> None:
    adapter_model("llama-gqa").save_pretrained(tmp_path)
    loaded = load_model(tmp_path, dtype=torch.bfloat16)
    assert loaded.dtype == torch.bfloat16
    assert loaded.hf.model.layers[0].self_attn.dms_proj_alpha.weight.dtype == torch.bfloat16


def test_plain_wrapper_drops_stale_dms_keys(tmp_path: Path) -> None:
    """Re-saving a DMS checkpoint's weights as a plain model must not keep its dms_* keys."""
    hf = tiny_hf("llama-gqa")
    DMSModel(hf, DMSConfig(window_size=3)).save_pretrained(tmp_path / "dms")
    assert "dms_window_size" in read_config(tmp_path / "dms")
    DMSModel(hf).save_pretrained(tmp_path / "plain")
    assert not any(k.startswith("dms_") for k in read_config(tmp_path / "plain"))
    assert load_model(tmp_path / "plain").dms is None


# --------------------------------------------------------------------------- NVIDIA-style folders


def nvidia_qwen3_folder(
    path: Path, *, adapters: bool, shards: bool = False
) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """A folder shaped like nvidia/Qwen3-8B-DMS-8x ([HF], q-neuron) or an [MO] adapter export.

    Returns the in-memory base model and the adapter tensors written (empty for q-neuron).
    """
    hf = tiny_hf("qwen3-qknorm", seed=5)
    hf.save_pretrained(path, max_shard_size="100KB" if shards else "1GB")
    cfg = {k: v for k, v in read_config(path).items() if not k.startswith("dms_")}
    cfg.pop("architectures", None)  # [MO] removes it
    cfg.update(dms_alpha_scale=100.0, dms_initial_alpha_offset=5.0, dms_window_size=3, dms_cr=8)
    cfg["use_sliding_window"] = False
    cfg["use_cache"] = True
    if not adapters:
        cfg["auto_map"] = HF_AUTO_MAP
        write_config(path, cfg)
        return hf, {}
    cfg["auto_map"] = MO_AUTO_MAP
    cfg.update(
        dms_separate_alpha=True,
        dms_alpha_per="head",
        dms_tau=0.1,
        dms_disable_eviction=False,
        dms_paged_attention_block_size=2,
        dms_manual_inference_mode=False,
        dms_chunked_prefill=None,
        dms_preallocate_for_tokens=4096,
    )
    write_config(path, cfg)
    gen = torch.Generator().manual_seed(9)
    c = hf.config
    extra = {}
    for i in range(c.num_hidden_layers):
        prefix = f"model.layers.{i}.self_attn."
        extra[prefix + "dms_proj_alpha.weight"] = 0.1 * torch.randn(
            c.num_key_value_heads, c.hidden_size, generator=gen
        )
        extra[prefix + "dms_proj_alpha_norm.weight"] = 1 + 0.1 * torch.randn(
            c.hidden_size, generator=gen
        )
    files = sorted(path.glob("*.safetensors"))
    target = files[-1]
    save_file({**load_file(target), **extra}, target, metadata={"format": "pt"})
    index = path / "model.safetensors.index.json"
    if index.exists():
        data = json.loads(index.read_text())
        data["weight_map"].update({k: target.name for k in extra})
        index.write_text(json.dumps(data))
    return hf, extra


def test_nvidia_hf_qneuron_folder(tmp_path: Path) -> None:
    base, _ = nvidia_qwen3_folder(tmp_path, adapters=False)
    loaded = load_model(tmp_path)
    assert loaded.dms == DMSConfig(window_size=3)  # NVIDIA defaults, separate_alpha absent
    assert loaded.dms.flavour == "qneuron"
    assert not hasattr(loaded.hf.model.layers[0].self_attn, "dms_proj_alpha")
    ids = random_ids(2, 12)
    expected = DMSModel(base, DMSConfig(window_size=3))
    assert_same_outputs(expected, loaded, ids)
    rate = loaded.forward_reference(ids).decisions.float().mean()
    assert 0 < rate < 1


@pytest.mark.parametrize(
    "shards", [pytest.param(False, id="single"), pytest.param(True, id="sharded")]
)
def test_nvidia_mo_adapter_folder(tmp_path: Path, shards: bool) -> None:
    base, extra = nvidia_qwen3_folder(tmp_path, adapters=True, shards=shards)
    if shards:
        assert len(list(tmp_path.glob("*.safetensors"))) > 1
    loaded = load_model(tmp_path)
    assert loaded.dms == DMSConfig(window_size=3, separate_alpha=True)
    for name, value in extra.items():
        *parents, leaf, _ = name.split(".")
        module = loaded.hf.get_submodule(".".join([*parents, leaf]))
        assert torch.equal(module.weight, value), name
    # Same numbers as the base model with those adapters attached in memory.
    expected = DMSModel(base)
    add_adapters(expected, DMSConfig(window_size=3))
    expected.hf.load_state_dict(extra, strict=False)
    ids = random_ids(2, 12)
    assert_same_outputs(expected, loaded, ids)


# --------------------------------------------------------------------------- flavour refusals


def test_adapter_config_without_adapter_weights_is_refused(tmp_path: Path) -> None:
    nvidia_qwen3_folder(tmp_path, adapters=False)
    cfg = read_config(tmp_path)
    cfg["dms_separate_alpha"] = True
    write_config(tmp_path, cfg)
    with pytest.raises(ModelLoadError, match="dms_separate_alpha"):
        load_model(tmp_path)


@pytest.mark.parametrize(
    "separate", [pytest.param(False, id="config-false"), pytest.param(None, id="no-dms-keys")]
)
def test_adapter_weights_without_adapter_config_are_refused(tmp_path: Path, separate) -> None:
    nvidia_qwen3_folder(tmp_path, adapters=True)
    cfg = read_config(tmp_path)
    if separate is None:
        cfg = {k: v for k, v in cfg.items() if not k.startswith("dms_")}
    else:
        cfg["dms_separate_alpha"] = separate
    write_config(tmp_path, cfg)
    with pytest.raises(ModelLoadError, match="dms_proj_alpha"):
        load_model(tmp_path)


@pytest.mark.parametrize(
    "key, value, needle",
    [
        pytest.param(
            "model.layers.0.self_attn.dms_proj_alpha.weight",
            torch.zeros(4, 64),  # [H_q, hidden] instead of [H_kv, hidden]
            "wrong shape",
            id="wrong-shape",
        ),
        pytest.param(
            "model.layers.0.self_attn.dms_proj_alpha.bias",
            torch.ones(2),  # the model has attention_bias=false: it would be dropped silently
            "unexpected",
            id="unexpected-bias",
        ),
    ],
)
def test_adapter_tensors_that_do_not_fit_are_refused(
    tmp_path: Path, key: str, value: torch.Tensor, needle: str
) -> None:
    nvidia_qwen3_folder(tmp_path, adapters=True)
    (file,) = tmp_path.glob("*.safetensors")
    save_file({**load_file(file), key: value}, file, metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=needle) as info:
        load_model(tmp_path)
    assert key in str(info.value)


def test_override_with_other_flavour_is_refused(tmp_path: Path) -> None:
    nvidia_qwen3_folder(tmp_path, adapters=False)
    with pytest.raises(ModelLoadError, match="qneuron"):
        load_model(tmp_path, dms=DMSConfig(separate_alpha=True))


def test_override_on_plain_folder_retrofits_zero_adapters(tmp_path: Path) -> None:
    hf = tiny_hf("llama-gqa")
    DMSModel(hf).save_pretrained(tmp_path)
    dms = DMSConfig(window_size=1, separate_alpha=True)
    loaded = load_model(tmp_path, dms=dms)
    assert loaded.dms == dms
    ids = random_ids(2, 9)
    out = loaded.forward_reference(ids)
    assert not out.decisions.any()  # z = −b everywhere
    with torch.no_grad():
        assert torch.equal(out.logits, hf(ids).logits)
    qneuron = load_model(tmp_path, dms=DMSConfig(window_size=1, initial_alpha_offset=0.0))
    assert qneuron.forward_reference(ids).decisions.any()


# --------------------------------------------------------------------------- unsupported / missing


def _save_config(path: Path, cfg) -> Path:
    cfg.save_pretrained(path)
    return path


SMALL = dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=2, vocab_size=VOCAB)


@pytest.mark.parametrize(
    "make_cfg, needle",
    [
        pytest.param(lambda: GPT2Config(n_embd=64, n_head=4, n_layer=2), "gpt2", id="gpt2"),
        pytest.param(lambda: PhiConfig(**SMALL), "phi", id="phi"),
        pytest.param(
            lambda: MixtralConfig(**SMALL, num_local_experts=4), "mixtral", id="mixtral-moe"
        ),
        pytest.param(
            lambda: Qwen2Config(
                **SMALL, use_sliding_window=True, sliding_window=8, max_window_layers=1
            ),
            "qwen2",
            id="qwen2-sliding",
        ),
        pytest.param(
            lambda: Qwen3Config(
                **SMALL,
                head_dim=16,
                layer_types=["full_attention", "sliding_attention"],
                sliding_window=8,
            ),
            "qwen3",
            id="qwen3-sliding-layer",
        ),
        pytest.param(
            lambda: MistralConfig(**SMALL, sliding_window=16, max_position_embeddings=512),
            "mistral",
            id="mistral-sliding",
        ),
    ],
)
def test_unsupported_architectures_are_refused(tmp_path: Path, make_cfg, needle: str) -> None:
    folder = _save_config(tmp_path, make_cfg())
    with pytest.raises(ModelLoadError) as info:
        load_model(folder)
    assert needle in str(info.value)


@pytest.mark.parametrize(
    "name",
    [pytest.param("nope", id="missing-dir"), pytest.param("org/does-not-exist", id="hub-id")],
)
def test_missing_model_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    # huggingface_hub reads HF_HUB_OFFLINE at import, so patch the constant too.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    target = tmp_path / name if name == "nope" else name
    with pytest.raises(ModelLoadError, match="cannot find model"):
        load_model(target)


def test_file_instead_of_folder_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"not a folder")
    with pytest.raises(ModelLoadError, match="not a model folder"):
        load_model(file)


def test_saved_adapter_names_are_readable_by_safetensors(tmp_path: Path) -> None:
    """The weights file is plain safetensors with NVIDIA's adapter keys (header check)."""
    adapter_model("qwen3-qknorm").save_pretrained(tmp_path)
    (file,) = tmp_path.glob("*.safetensors")
    with safe_open(str(file), framework="pt") as handle:
        keys = set(handle.keys())
    assert "model.layers.1.self_attn.dms_proj_alpha.weight" in keys
    assert "model.layers.1.self_attn.dms_proj_alpha_norm.weight" in keys
