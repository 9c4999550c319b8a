"""Model fingerprint: stable for the same model, names the part that changed, caches file hashes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from agentrt.errors import ModelLoadError
from agentrt.sessions import Fingerprint, model_fingerprint
from agentrt.sessions import fingerprint as fingerprint_mod
from agentrt.sessions.fingerprint import PART_NAMES
from tests.dms.serving_helpers import tiny_model


def tiny_tokenizer(words: int = 97) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over 'w0' … 'w{words-1}' (no files, no network)."""
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(words)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0")


def _model(**kw):
    model = tiny_model(window=3, offset=5.0, **kw)
    model.tokenizer = tiny_tokenizer()
    return model


def test_same_model_gives_the_same_digest() -> None:
    a, b = _model(seed=1), _model(seed=1)
    fa = model_fingerprint(a)
    assert set(fa.parts) == set(PART_NAMES)
    assert fa == model_fingerprint(a) == model_fingerprint(b)
    assert fa.digest == model_fingerprint(b).digest and len(fa.digest) == 64
    assert fa.parts["dtype"] == "float32" and fa.parts["weights"].startswith("tensors:")
    assert fa.diff(model_fingerprint(_model(seed=2))) == ["weights"]


def _change(model, part: str) -> None:
    if part == "weights":
        with torch.no_grad():
            model.hf.lm_head.weight[3, 1] *= 1.0001
    elif part == "tokenizer":
        model.tokenizer = tiny_tokenizer(words=96)
    elif part == "chat_template":
        model.tokenizer.chat_template = "{% for m in messages %}{{ m.content }}{% endfor %}"
    elif part == "dms_config":
        model.dms = model.dms.replace(window_size=4)
    elif part == "config":
        model.hf.config.rope_parameters = {"rope_theta": 5e5, "rope_type": "default"}
    elif part == "dtype":
        model.hf.to(torch.float64)


@pytest.mark.parametrize("part", [p for p in PART_NAMES if p != "dtype"])
def test_a_change_is_named_by_exactly_its_part(part: str) -> None:
    model = _model()
    before = model_fingerprint(model)
    _change(model, part)
    after = model_fingerprint(model)
    assert before.diff(after) == [part] and before.digest != after.digest


def test_dtype_change_names_dtype() -> None:
    model = _model()
    before = model_fingerprint(model)
    _change(model, "dtype")
    assert "dtype" in before.diff(model_fingerprint(model))


def test_volatile_state_does_not_change_it(tmp_path: Path) -> None:
    model = _model()
    before = model_fingerprint(model)
    model.tokenizer("w1 w2 w3 w4", truncation=True, max_length=2)  # sets backend truncation
    model.save_pretrained(tmp_path / "m")  # sets config.architectures
    assert model_fingerprint(model) == before
    no_tokenizer = model_fingerprint(tiny_model(window=3, offset=5.0))
    assert no_tokenizer.parts["tokenizer"] == no_tokenizer.parts["chat_template"] == "none"


def test_json_round_trip_and_diff_of_missing_parts() -> None:
    fp = Fingerprint(parts={"a": "1", "b": "2"})
    assert Fingerprint.from_json(fp.to_json()) == fp
    assert fp.diff(Fingerprint(parts={"a": "1", "c": "3"})) == ["b", "c"]
    with pytest.raises(TypeError, match="str to str"):
        Fingerprint(parts={"a": 1})  # type: ignore[dict-item]


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """An HF folder of a tiny model with its weights split over two safetensors files."""
    model = _model()
    folder = model.save_pretrained(tmp_path / "model")
    weights = sorted(folder.glob("*.safetensors"))
    assert weights, list(folder.iterdir())
    (folder / "extra-00002.safetensors").write_bytes(weights[0].read_bytes()[:4096])
    return folder


def _counting(monkeypatch) -> list[Path]:
    calls: list[Path] = []
    real = fingerprint_mod.hash_file

    def counted(path: Path) -> str:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(fingerprint_mod, "hash_file", counted)
    return calls


def test_weight_file_digests_are_cached_by_size_and_mtime(
    model_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    model = _model()
    cache_dir = tmp_path / "home"
    calls = _counting(monkeypatch)
    first = model_fingerprint(model, model_dir=model_dir, cache_dir=cache_dir)
    assert len(calls) == 2 and first.parts["weights"].startswith("files:")
    cache_file = cache_dir / "fingerprints.json"
    assert cache_file.stat().st_mode & 0o777 == 0o600
    assert len(json.loads(cache_file.read_text())["files"]) == 2
    calls.clear()
    assert model_fingerprint(model, model_dir=model_dir, cache_dir=cache_dir) == first
    assert calls == []
    extra = model_dir / "extra-00002.safetensors"
    st = extra.stat()
    os.utime(extra, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # touched, same bytes
    assert model_fingerprint(model, model_dir=model_dir, cache_dir=cache_dir) == first
    assert calls == [extra]
    calls.clear()
    extra.write_bytes(extra.read_bytes() + b"\0")  # new size
    changed = model_fingerprint(model, model_dir=model_dir, cache_dir=cache_dir)
    assert calls == [extra] and first.diff(changed) == ["weights"]
    calls.clear()
    assert model_fingerprint(model, model_dir=model_dir) == changed  # no cache: hash again
    assert len(calls) == 2


def test_corrupt_cache_file_is_ignored_and_rewritten(model_dir: Path, tmp_path: Path) -> None:
    model = _model()
    cache_dir = tmp_path / "home"
    cache_dir.mkdir()
    (cache_dir / "fingerprints.json").write_text("{not json")
    fp = model_fingerprint(model, model_dir=model_dir, cache_dir=cache_dir)
    assert fp == model_fingerprint(model, model_dir=model_dir)
    assert json.loads((cache_dir / "fingerprints.json").read_text())["version"] == 1


def test_folder_without_weights_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no weight files"):
        model_fingerprint(_model(), model_dir=tmp_path)


def test_tokenizer_digest_is_cached_for_a_tokenizer_loaded_from_the_model_folder(
    model_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    model = _model()
    model.tokenizer.save_pretrained(model_dir)
    model.tokenizer = PreTrainedTokenizerFast.from_pretrained(model_dir)
    cache_dir = tmp_path / "home"
    real, calls = fingerprint_mod.tokenizer_digest, []

    def counted(tok):
        calls.append(tok)
        return real(tok)

    monkeypatch.setattr(fingerprint_mod, "tokenizer_digest", counted)
    first = model_fingerprint(model, model_dir=model_dir, cache_dir=cache_dir)
    assert len(calls) == 1 and first.parts["tokenizer"] == real(model.tokenizer)
    assert model_fingerprint(model, model_dir=model_dir, cache_dir=cache_dir) == first
    assert len(calls) == 1  # the second fingerprint reused the digest
    model.tokenizer.add_tokens(["w_new"])  # changed in memory: its length is in the stamp
    grown = model_fingerprint(model, model_dir=model_dir, cache_dir=cache_dir)
    assert len(calls) == 2 and first.diff(grown) == ["tokenizer"]
    assert grown.parts["tokenizer"] == real(model.tokenizer)
    model.tokenizer = PreTrainedTokenizerFast.from_pretrained(model_dir)
    tok_file = model_dir / "tokenizer.json"
    st = tok_file.stat()
    os.utime(tok_file, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # touched: hash again
    assert model_fingerprint(model, model_dir=model_dir, cache_dir=cache_dir) == first
    assert len(calls) == 3
    model.tokenizer = tiny_tokenizer(words=50)  # not from the folder: never cached
    other = model_fingerprint(model, model_dir=model_dir, cache_dir=cache_dir)
    model_fingerprint(model, model_dir=model_dir, cache_dir=cache_dir)
    assert len(calls) == 5 and first.diff(other) == ["tokenizer"]
