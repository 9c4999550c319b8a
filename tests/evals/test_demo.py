"""The demo-model scripts end to end on a tiny configuration: tokenizer, data, pretrain, retrofit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open

from agentrt.cli.main import cli
from agentrt.demo.corpus import DOC_END, training_block, write_jsonl
from agentrt.demo.export import export
from agentrt.demo.pretrain import PretrainConfig, learning_rate
from agentrt.demo.pretrain import main as pretrain_main
from agentrt.demo.tokenizer import ADDED_TOKENS, SPECIAL_TOKENS, build_tokenizer
from agentrt.dms import load_model
from agentrt.errors import ConfigError
from agentrt.evals.runner import evaluate
from tests.evals.helpers import small_tokenizer

TINY = [
    "--steps", "12", "--context", "512", "--batch-size", "2", "--hidden-size", "64",
    "--layers", "2", "--heads", "4", "--kv-heads", "2", "--head-dim", "16",
    "--intermediate-size", "96", "--vocab-size", "1024", "--tokenizer-documents", "200",
    "--warmup", "2", "--lr", "0.005", "--log-every", "1", "--heldout-blocks", "1",
    "--device", "cpu",
]  # fmt: skip


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`python -m agentrt.demo.pretrain` on the tiny configuration (in-process)."""
    out = tmp_path_factory.mktemp("demo") / "base"
    pretrain_main(["--out", str(out), *TINY])
    return out


def test_tokenizer_is_deterministic_and_saves_in_hf_format(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    a = build_tokenizer(vocab_size=512, documents=60, seed=4)
    b = build_tokenizer(vocab_size=512, documents=60, seed=4)
    assert a.get_vocab() == b.get_vocab() and len(a) <= 512 + len(ADDED_TOKENS)
    a.save_pretrained(tmp_path)
    back = AutoTokenizer.from_pretrained(tmp_path)
    text = "<|im_start|>user\nWhat is 12 + 7?<|im_end|>\n<tool_call>x</tool_call>"
    assert back.encode(text) == a.encode(text)
    assert back.chat_template == a.chat_template and back.eos_token == "<|im_end|>"
    for token in (*SPECIAL_TOKENS, *ADDED_TOKENS):
        assert len(back.encode(token, add_special_tokens=False)) == 1, token


def test_training_blocks_are_pure_functions_of_seed_and_index() -> None:
    tok = small_tokenizer()
    a = training_block(tok, seed=0, index=5, context=768)
    assert a == training_block(tok, seed=0, index=5, context=768)
    assert a != training_block(tok, seed=0, index=6, context=768)
    assert a != training_block(tok, seed=1, index=5, context=768)
    ids, labels = a
    end = tok.convert_tokens_to_ids(DOC_END)
    assert len(ids) == len(labels) == 768 and ids.count(end) >= 1
    real = [i for i, lab in zip(ids, labels, strict=True) if lab != -100]
    assert real == ids[: len(real)] and real[-1] == end, "whole documents, then padding"
    ids2, masked = training_block(tok, seed=0, index=5, context=768, loss_on="assistant")
    assert ids2 == ids and 0 < sum(x != -100 for x in masked) < len(real) / 3
    with pytest.raises(ConfigError, match="fits"):
        training_block(tok, seed=0, index=0, context=150, min_length=64)


def test_pretrain_writes_a_servable_model(pretrained: Path) -> None:
    report = json.loads((pretrained / "pretrain_report.json").read_text())
    log = [json.loads(x) for x in (pretrained / "pretrain_log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log] == list(range(12)) and report["steps"] == 12
    assert log[-1]["loss"] < log[0]["loss"] - 0.5, (log[0]["loss"], log[-1]["loss"])
    assert report["heldout_loss"] < log[0]["loss"] and report["parameters"] > 50_000
    config = json.loads((pretrained / "pretrain_config.json").read_text())
    assert config["context"] == 512 and config["seed"] == 0
    model = load_model(pretrained)
    assert model.arch.model_type == "qwen3" and model.arch.max_positions == 512
    assert not model.evicting and model.tokenizer.chat_template
    result = evaluate(
        model, model.tokenizer, tasks=["niah"], lengths=[256], policies=["dense"], crs=[],
        n_items=1, max_new_tokens=2,
    )  # fmt: skip
    assert result.rows[0].n == 1 and result.rows[0].achieved_cr == 1.0


def test_documented_retrofit_step_gives_a_dms_model(pretrained: Path, tmp_path: Path) -> None:
    tok = load_model(pretrained).tokenizer
    data = write_jsonl(
        tmp_path / "retrofit.jsonl", tok, documents=24, seed=1, min_length=128, max_length=300
    )
    assert len(data.read_text().splitlines()) == 24
    out = tmp_path / "dms"
    result = CliRunner().invoke(
        cli,
        ["-q", "retrofit", "--model", str(pretrained), "--data", str(data), "--out", str(out),
         "--flavour", "adapter", "--window", "16", "--target-cr", "8", "--steps", "6",
         "--ramp-steps", "3", "--lr", "0.01", "--seq-len", "256", "--device", "cpu",
         "--save-every", "0", "--max-eval-blocks", "2"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    model = load_model(out)
    assert model.evicting and model.dms.separate_alpha and model.dms.window_size == 16
    rows = evaluate(
        model, model.tokenizer, tasks=["vt"], lengths=[300], policies=["dense", "dms"], crs=[],
        n_items=1, max_new_tokens=2,
    ).rows  # fmt: skip
    assert rows[0].achieved_cr == 1.0 and rows[1].achieved_cr > 1.0
    shipped = tmp_path / "ship"
    size = export(out, shipped, max_mb=10)
    with safe_open(str(shipped / "model.safetensors"), framework="pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert size < 2**20 and dtypes == {torch.bfloat16}
    assert load_model(shipped).dms == model.dms
    with pytest.raises(ConfigError, match="over the"):
        export(out, tmp_path / "small", max_mb=0.01)


def test_pretrain_config_validation_and_schedule(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        PretrainConfig(out=tmp_path, steps=0, heads=3, kv_heads=2, loss_on="some", lr=0)
    for part in ("steps=0", "multiple of kv_heads", "loss_on", "lr=0"):
        assert part in err.value.message, part
    cfg = PretrainConfig(out=tmp_path, steps=100, warmup=10, lr=1.0)
    lrs = [learning_rate(cfg, s) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[99] == pytest.approx(0.1, abs=1e-3) and max(lrs) == pytest.approx(1.0)


def test_batches_do_not_depend_on_the_number_of_workers(tmp_path: Path) -> None:
    from agentrt.demo.pretrain import BlockBatches

    cfg = PretrainConfig(out=tmp_path, steps=3, context=384, batch_size=2, workers=2)
    data = BlockBatches(small_tokenizer(), cfg)
    loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=2)
    for step, (ids, labels) in enumerate(loader):
        direct_ids, direct_labels = data[step]
        assert ids.shape == (2, 384) and torch.equal(ids, direct_ids)
        assert torch.equal(labels, direct_labels)
