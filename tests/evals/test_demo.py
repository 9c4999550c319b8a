"""The demo-model scripts end to end on a tiny configuration: tokenizer, data, pretrain, retrofit."""

from __future__ import annotations

import dataclasses
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
         "--save-every", "0", "--max-eval-blocks", "2", "--save-model"],
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
        PretrainConfig(
            out=tmp_path, steps=0, heads=3, kv_heads=2, prompt_weight=2.0, lr=0,
            length_dist="zipf", amp="fp8", warm_steps=5, warm_context=64, context=160,
        )  # fmt: skip
    for part in ("steps=0", "multiple of kv_heads", "prompt_weight", "lr=0", "length_dist",
                 "amp=", "warm_steps=5", "warm_context=64 cannot hold",
                 "context=160 cannot hold"):  # fmt: skip
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
    for step, (ids, labels, weights) in enumerate(loader):
        direct_ids, direct_labels, direct_weights = data[step]
        assert ids.shape == (2, 384) and torch.equal(ids, direct_ids)
        assert torch.equal(labels, direct_labels) and torch.equal(weights, direct_weights)


def test_warm_steps_use_short_blocks_and_prompt_tokens_weigh_prompt_weight(tmp_path: Path) -> None:
    from agentrt.demo.corpus import training_block_parts
    from agentrt.demo.pretrain import WARM_OFFSET, BlockBatches

    tok = small_tokenizer()
    cfg = PretrainConfig(
        out=tmp_path, steps=3, warm_steps=2, warm_context=384, warm_batch_size=3, context=512,
        batch_size=1, prompt_weight=0.25, length_dist="loguniform",
    )  # fmt: skip
    data = BlockBatches(tok, cfg)
    ids, labels, weights = data[1]
    assert ids.shape == (3, 384)
    ids2, labels2, prompt = training_block_parts(
        tok, seed=0, index=WARM_OFFSET + 3, context=384, length_dist="loguniform"
    )
    assert ids[0].tolist() == ids2 and labels[0].tolist() == labels2
    expected = [
        0.0 if lab == -100 else (0.25 if p else 1.0) for lab, p in zip(labels2, prompt, strict=True)
    ]
    assert weights[0].tolist() == expected
    assert 0 < sum(x == 1.0 for x in expected) < sum(x == 0.25 for x in expected)
    assert data[2][0].shape == (1, 512)  # after the warm steps: the main context
    replies_only, masked = training_block(tok, seed=0, index=WARM_OFFSET + 3, context=384,
                                          length_dist="loguniform", loss_on="assistant")  # fmt: skip
    assert replies_only == ids2
    assert [m != -100 for m in masked] == [w == 1.0 for w in expected]


def test_loguniform_lengths_favour_short_documents() -> None:
    import random

    from agentrt.demo.corpus import sample_length

    rng = random.Random(0)
    uni = [sample_length(rng, 128, 2048) for _ in range(2000)]
    log = [sample_length(rng, 128, 2048, "loguniform") for _ in range(2000)]
    assert min(log) >= 128 and max(log) <= 2048
    assert sum(log) / len(log) < 0.7 * sum(uni) / len(uni)  # 692 vs 1088 expected


def test_time_budget_fits_the_steps_and_the_written_config_reproduces_the_run(
    tmp_path: Path,
) -> None:
    from agentrt.demo.pretrain import pretrain

    tiny = dict(
        context=384, batch_size=1, hidden_size=32, layers=1, heads=2, kv_heads=1, head_dim=16,
        intermediate_size=32, warmup=3, lr=0.005, heldout_blocks=0, device="cpu",
        tokenizer=None, vocab_size=512, tokenizer_documents=40, log_every=1,
    )  # fmt: skip
    with pytest.raises(ConfigError, match="warmup >= 3"):
        PretrainConfig(out=tmp_path, time_budget=5.0, **{**tiny, "warmup": 2})
    budgeted = pretrain(
        PretrainConfig(out=tmp_path / "a", steps=100_000, time_budget=2.0, **tiny), progress=False
    )
    steps = budgeted["steps"]
    assert 3 <= steps < 100_000 and budgeted["time_budget"] == 2.0
    written = json.loads((tmp_path / "a" / "pretrain_config.json").read_text())
    assert written["steps"] == steps and written["time_budget"] == 0.0
    again = pretrain(PretrainConfig(out=tmp_path / "b", steps=steps, **tiny), progress=False)
    assert again["final_loss"] == budgeted["final_loss"]
    with (
        safe_open(str(tmp_path / "a" / "model.safetensors"), "pt") as fa,
        safe_open(str(tmp_path / "b" / "model.safetensors"), "pt") as fb,
    ):
        for key in fa.keys():  # noqa: SIM118
            assert torch.equal(fa.get_tensor(key), fb.get_tensor(key)), key


def test_build_runs_every_stage_and_packs_one_tarball(tmp_path: Path) -> None:
    import tarfile

    from agentrt.demo.build import main as build_main

    build_main(["--out", str(tmp_path), "--tiny", "--device", "cpu", "--ship-to",
                str(tmp_path / "shipped")])  # fmt: skip
    report = json.loads((tmp_path / "build_report.json").read_text())
    assert list(report["seconds"]) == ["tokenizer", "pretrain", "retrofit", "export", "eval"]
    assert json.loads((tmp_path / "shipped" / "build_report.json").read_text()) == report
    shipped = (tmp_path / "shipped" / "demo-model.tar.gz").read_bytes()
    assert shipped == (tmp_path / "demo-model.tar.gz").read_bytes()
    with pytest.raises(ConfigError, match="already holds base, dms, demo-model"):
        build_main(["--out", str(tmp_path), "--tiny", "--device", "cpu"])
    assert set(report["targets"]) == {
        "dense_at_least_90", "dms_cr_at_least_7_5", "dms_within_3_points", "all"
    }  # fmt: skip
    policies = {r["policy"] for r in report["eval_rows"]}
    assert policies == {"dense", "dms", "window"} and report["shipped_bytes"] < 2**20
    with tarfile.open(tmp_path / "demo-model.tar.gz") as tar:
        names = set(tar.getnames())
        tar.extractall(tmp_path / "unpacked")  # noqa: S202  (our own archive)
    assert {"eval.png", "build_report.json", "demo-model/model.safetensors"} <= names
    model = load_model(tmp_path / "unpacked" / "demo-model")
    assert model.evicting and model.dms.window_size == 16 and model.tokenizer is not None


def test_targets_are_judged_per_task_at_the_longest_length() -> None:
    from agentrt.demo.build import check_targets

    def row(task: str, length: int, policy: str, acc: float, cr: float = 1.0) -> dict:
        return {"task": task, "length": length, "policy": policy, "accuracy": acc,
                "achieved_cr": cr}  # fmt: skip

    rows = [row("niah", 1024, "dense", 0.96), row("niah", 4096, "dense", 0.92),
            row("niah", 4096, "dms", 0.90, 8.1), row("niah", 1024, "dms", 0.5, 4.0)]  # fmt: skip
    assert check_targets(rows)["all"]
    assert not check_targets([*rows[:2], row("niah", 4096, "dms", 0.88, 8.1)])["all"]
    assert not check_targets([*rows[:2], row("niah", 4096, "dms", 0.92, 7.4)])["all"]
    assert not check_targets([row("niah", 1024, "dense", 0.89), *rows[1:]])["dense_at_least_90"]
    vt = [row("vt", 1024, "dense", 0.95), row("vt", 4096, "dense", 0.95)]
    missing = check_targets([*rows, *vt])  # vt has no dms row at the longest length
    assert missing["dense_at_least_90"] and not missing["dms_within_3_points"]
    assert not missing["dms_cr_at_least_7_5"] and not missing["all"]
    stray = check_targets([*rows, row("qa", 4096, "dms", 1.0, 9.0)])  # no dense row for it
    assert not stray["all"]


def test_init_continues_from_saved_weights(pretrained: Path, tmp_path: Path) -> None:
    from agentrt.demo.pretrain import pretrain

    out = tmp_path / "more"
    cfg = PretrainConfig(out=out, init=pretrained, steps=2, context=640, batch_size=1,
                         warmup=1, lr=1e-9, heldout_blocks=0, device="cpu")  # fmt: skip
    assert pretrain(cfg, progress=False)["steps"] == 2
    with (
        safe_open(str(pretrained / "model.safetensors"), "pt") as fa,
        safe_open(str(out / "model.safetensors"), "pt") as fb,
    ):
        for key in fa.keys():  # noqa: SIM118  (lr 1e-9: the saved weights, not a fresh init)
            assert torch.allclose(fa.get_tensor(key), fb.get_tensor(key), atol=1e-6), key
    assert json.loads((out / "config.json").read_text())["max_position_embeddings"] == 640
    assert (out / "tokenizer.json").read_text() == (pretrained / "tokenizer.json").read_text()
    with pytest.raises(ConfigError, match="not a model folder"):
        pretrain(PretrainConfig(out=tmp_path / "x", init=tmp_path, tokenizer=pretrained),
                 progress=False)  # fmt: skip


def test_weighted_loss_matches_hf_loss_and_weights_each_target(pretrained: Path) -> None:
    from transformers import AutoModelForCausalLM

    from agentrt.demo.pretrain import weighted_loss

    model = AutoModelForCausalLM.from_pretrained(pretrained).eval()
    torch.manual_seed(0)
    ids = torch.randint(0, 1000, (2, 24))
    labels = ids.clone()
    labels[:, 18:] = -100
    ones = (labels != -100).float()
    with torch.no_grad():
        ref = model(input_ids=ids, labels=labels).loss  # HF's own shifted mean CE
        assert torch.allclose(weighted_loss(model, ids, labels, ones), ref, atol=1e-5)
        logits = model(input_ids=ids).logits[:, :-1].float()
        ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        w = ones.clone()
        w[:, :9] = 0.25  # "prompt" targets at a quarter weight
        expected = (ce * w[:, 1:]).sum() / w[:, 1:].sum()
        assert torch.allclose(weighted_loss(model, ids, labels, w), expected, atol=1e-5)


def test_init_refuses_a_tokenizer_larger_than_the_model_vocabulary(
    pretrained: Path, tmp_path: Path
) -> None:
    from agentrt.demo.pretrain import pretrain

    big = tmp_path / "big-tok"
    build_tokenizer(vocab_size=2048, documents=200, seed=1).save_pretrained(big)
    cfg = PretrainConfig(out=tmp_path / "x", init=pretrained, tokenizer=big, steps=1,
                         context=512, batch_size=1, device="cpu")  # fmt: skip
    with pytest.raises(ConfigError, match="embeds only"):
        pretrain(cfg, progress=False)


def test_bf16_autocast_on_a_cpu_without_native_bf16_warns(tmp_path: Path, monkeypatch) -> None:
    from agentrt.demo import pretrain as P

    assert P.cpu_has_native_bf16("flags\t\t: fpu avx avx2 fma\n") is False
    assert P.cpu_has_native_bf16("flags\t\t: avx2 avx512f avx512_bf16\n") is True
    assert P.cpu_has_native_bf16("model name: x\n") is None
    cfg = PretrainConfig(out=tmp_path, amp="bf16")
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: False)
    assert "--amp off" in P.warn_emulated_bf16(cfg, torch.device("cpu"))
    assert P.warn_emulated_bf16(dataclasses.replace(cfg, amp="off"), torch.device("cpu")) is None
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: True)
    assert P.warn_emulated_bf16(cfg, torch.device("cpu")) is None


def test_followups_pack_more_questions_per_block_and_stay_deterministic() -> None:
    from agentrt.demo.corpus import training_block_parts

    tok = small_tokenizer()
    kw = {"seed": 0, "context": 1024, "length_dist": "loguniform"}
    plain = [training_block_parts(tok, index=i, **kw) for i in range(6)]
    more = [training_block_parts(tok, index=i, followups=2, **kw) for i in range(6)]
    assert more == [training_block_parts(tok, index=i, followups=2, **kw) for i in range(6)]
    question = tok.encode("Question:", add_special_tokens=False)

    def questions(ids: list[int]) -> int:
        n = len(question)
        return sum(ids[i : i + n] == question for i in range(len(ids) - n + 1))

    def replies(rows) -> int:  # reply tokens (labels kept, not prompt)
        return sum(lab != -100 and not p for r in rows for lab, p in zip(r[1], r[2], strict=True))

    assert sum(questions(r[0]) for r in more) > 1.5 * sum(questions(r[0]) for r in plain)
    assert replies(more) > 1.5 * replies(plain)


def test_reply_reserve_grows_per_followup_and_config_validation_uses_it(tmp_path: Path) -> None:
    from agentrt.demo.corpus import REPLY_RESERVE, reply_reserve

    assert reply_reserve() == REPLY_RESERVE == 192
    assert reply_reserve(3) == 192 + 3 * 64
    PretrainConfig(out=tmp_path, context=800, min_length=605)  # 605 + 192 fits
    with pytest.raises(ConfigError, match=r"context=800 cannot hold one document .* \+ 200 tokens"):
        PretrainConfig(out=tmp_path, context=800, min_length=605, followups=1)  # 605 + 200
