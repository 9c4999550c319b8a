"""GGUF → HF folder: equal to transformers' own GGUF loading, on a tiny llama the test writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from agentrt.errors import ModelLoadError
from agentrt.models.gguf_convert import convert_gguf
from tests.models.tiny_gguf import CHAT_TEMPLATE


@pytest.fixture(scope="module")
def converted(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny GGUF converted once."""
    out = tmp_path_factory.mktemp("converted")
    convert_gguf(tiny_gguf, out, progress=False)
    return out


@pytest.fixture(scope="module")
def reference(tiny_gguf: Path):
    """transformers' own GGUF model loader (needs accelerate), in fp32."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        tiny_gguf.parent, gguf_file=tiny_gguf.name, dtype=torch.float32
    ).eval()


def test_converted_folder_holds_config_weights_tokenizer_and_generation_config(
    converted: Path,
) -> None:
    names = {p.name for p in converted.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= names
    config = json.loads((converted / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 2
    assert config["num_key_value_heads"] == 2 and config["tie_word_embeddings"] is True
    generation = json.loads((converted / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2 and generation["bos_token_id"] == 1


def test_converted_weights_equal_transformers_gguf_loading(converted: Path, reference) -> None:
    """Every tensor type (F16, Q8_0, Q4_1, F32 norms) dequantizes to what transformers loads."""
    from safetensors.torch import load_file

    ours = load_file(str(converted / "model.safetensors"))
    theirs = reference.state_dict()
    assert set(ours) == set(theirs) - {"lm_head.weight"}  # tied to the embedding
    for name, tensor in ours.items():
        assert tensor.dtype == torch.float32, name
        assert torch.equal(tensor, theirs[name]), name


def test_converted_model_logits_and_chat_template_match(converted: Path, reference) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(converted)
    assert tok.chat_template == CHAT_TEMPLATE
    messages = [{"role": "user", "content": "the theme of the thesis"}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
    ids = torch.tensor([ids["input_ids"]])
    text = tok.decode(ids[0])
    assert text.startswith("<|im_start|>user\nthe theme") and text.endswith("assistant\n")
    with torch.no_grad():
        diff = (model(ids).logits - reference(ids).logits).abs().max().item()
    assert diff <= 1e-5, diff


def test_transformers_cannot_save_a_model_loaded_from_gguf(reference, tmp_path: Path) -> None:
    """Why the converter builds a plain model: transformers refuses to serialize a GGUF load."""
    with pytest.raises(ValueError, match="not serializable"):
        reference.save_pretrained(tmp_path / "out")


def test_a_file_that_is_not_gguf_is_a_model_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ModelLoadError, match="cannot read .* as a GGUF model"):
        convert_gguf(bad, tmp_path, progress=False)
