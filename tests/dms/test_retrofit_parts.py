"""Retrofit building blocks without training: config and YAML, schedule, loss, data, batches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from agentrt.dms.retrofit.config import RetrofitConfig, load_config
from agentrt.dms.retrofit.data import BatchOrder, iter_documents, prepare_data, split_blocks
from agentrt.dms.retrofit.loss import (
    compression_loss,
    distillation_loss,
    noise_seed,
    token_kl,
    valid_positions,
)
from agentrt.errors import ConfigError, TaskFileError

from .test_retrofit import corpus, make_tokenizer

REQUIRED = dict(model="m", data=("d.txt",), out="o")


@pytest.fixture(scope="module")
def tokenizer():
    """The byte-level BPE of the retrofit tests."""
    return make_tokenizer(corpus())


# -- config --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("target_cr", 0.5, "target_cr=0.5 must be ≥ 1"),
        ("initial_cr", 9.0, "initial_cr=9.0 must be ≤ target_cr=8.0"),
        ("window", 4096, "window=4096 must be < seq_len − 1"),
        ("flavour", "lora", "flavour='lora' must be one of adapter, qneuron"),
        ("steps", "many", "steps='many' must be an integer"),
        ("eval_fraction", 1.0, "eval_fraction=1.0 must be between 0 and 1"),
        ("device", "tpu", "device='tpu' must be auto, cpu, cuda or cuda:N"),
        ("objective", "mse", "objective='mse' must be one of kl, layer_local"),
        ("max_minutes", -1.0, "max_minutes=-1.0 must be ≥ 0"),
        ("heldout_data", "held.txt", "heldout_data='held.txt' must be a list of paths"),
    ],
)
def test_invalid_values_name_key_and_value(key: str, value: object, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        RetrofitConfig(**REQUIRED, **{key: value})


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        RetrofitConfig.from_dict({"target_cr": 0, "lr": -1})
    text = str(err.value)
    for needle in ("model is required", "data is required", "target_cr=0", "lr=-1"):
        assert needle in text


def test_yaml_keys_flags_win_and_unknown_keys_name_their_line(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("model: m\ndata: [a.txt, b.txt]\nout: o\nsteps: 7\nlr: 1\n")
    cfg = load_config(path, {"steps": 9})
    assert (cfg.steps, cfg.lr, cfg.data) == (9, 1.0, ("a.txt", "b.txt"))
    path.write_text("model: m\ndata: a.txt\nout: o\n\nstepz: 7\n")
    with pytest.raises(ConfigError, match=r"r.yaml line 5: unknown key 'stepz'"):
        load_config(path)
    path.write_text("model: m\ndata: a.txt\nout: o\nseq_len: long\n")
    with pytest.raises(ConfigError, match=r"r.yaml line 4: seq_len='long' must be an integer"):
        load_config(path)
    path.write_text("model: m\n  data: [a\n")
    with pytest.raises(ConfigError, match=r"r.yaml line \d+, column \d+: invalid YAML"):
        load_config(path)
    path.write_text("- model\n")
    with pytest.raises(ConfigError, match="line 1: the top level must be a mapping"):
        load_config(path)


def test_the_example_config_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "retrofit.yaml"
    cfg = load_config(example, dict(REQUIRED))
    assert cfg.target_cr == 8.0 and cfg.window == 256 and cfg.tokens_per_step == 32768


def test_the_cpu_recipe_of_the_default_model_is_valid() -> None:
    recipe = Path(__file__).resolve().parents[2] / "examples" / "retrofit-smollm2-cpu.yaml"
    cfg = load_config(recipe, {**REQUIRED, "heldout_data": ["h.jsonl"]})
    assert cfg.objective == "layer_local" and cfg.window == 128 and cfg.eval_seq_len == 8192
    assert cfg.tokens_per_step == 4096 and cfg.threads == 1 and cfg.save_every_minutes == 10


def test_cr_schedule_is_linear_then_flat() -> None:
    cfg = RetrofitConfig(**REQUIRED, initial_cr=1.0, target_cr=16.0, ramp_steps=510)
    assert cfg.cr_at(0) == 1.0 and cfg.cr_at(34) == pytest.approx(2.0)
    assert cfg.cr_at(238) == pytest.approx(8.0) and cfg.target_fraction(238) == 0.875
    assert cfg.cr_at(510) == cfg.cr_at(9999) == 16.0
    assert RetrofitConfig(**REQUIRED, ramp_steps=0).cr_at(0) == 8.0
    assert cfg.dms_config().separate_alpha and cfg.dms_config().window_size == 512


# -- loss ----------------------------------------------------------------------------------


def test_token_kl_is_kl_student_to_teacher_and_chunking_changes_nothing() -> None:
    gen = torch.Generator().manual_seed(0)
    s = torch.randn(2, 7, 11, generator=gen, dtype=torch.float64).requires_grad_()
    t = torch.randn(2, 7, 11, generator=gen, dtype=torch.float64)
    ref = F.kl_div(t.log_softmax(-1), s.log_softmax(-1), log_target=True, reduction="none").sum(-1)
    whole = token_kl(s, t)
    torch.testing.assert_close(whole, ref.float())
    (grad_whole,) = torch.autograd.grad(whole.sum(), s)
    chunked = token_kl(s, t, chunk_rows=3)
    (grad_chunked,) = torch.autograd.grad(chunked.sum(), s)
    torch.testing.assert_close(chunked, whole)
    torch.testing.assert_close(grad_chunked, grad_whole)
    assert token_kl(t, t).abs().max() < 1e-6


def test_distillation_skips_eos_inputs_and_compression_is_one_sided() -> None:
    ids = torch.tensor([[5, 0, 6, 0]])
    valid = valid_positions(ids, eos_id=0)
    assert valid.tolist() == [[True, False, True, False]]
    s = torch.zeros(1, 4, 3)
    t = torch.zeros(1, 4, 3)
    t[0, 1] = torch.tensor([9.0, 0, 0])  # differs only at an EOS input
    assert distillation_loss(s, t, valid) == 0
    dec = torch.zeros(2, 2, 4, 1)  # [L, B, T, H]
    dec[:, 0] = 1  # sequence 0 evicts everything, sequence 1 nothing
    assert compression_loss(dec, 0.5).item() == pytest.approx(0.25)  # (0 + 0.5) / 2
    assert compression_loss(dec, 0.0).item() == 0


def test_noise_seed_is_a_pure_function_of_seed_step_micro() -> None:
    assert noise_seed(42, 3, 1) == noise_seed(42, 3, 1)
    seeds = {noise_seed(42, step, micro) for step in range(20) for micro in range(4)}
    assert len(seeds) == 80 and all(0 <= s < 2**32 - 1 for s in seeds)


# -- data ----------------------------------------------------------------------------------


def test_text_jsonl_and_chat_records_are_packed(tmp_path: Path, tokenizer) -> None:
    docs = corpus(12)
    (tmp_path / "a.txt").write_text(docs[0])
    lines = [json.dumps({"text": d}) for d in docs[1:6]] + [""]
    lines += [json.dumps({"messages": [{"role": "user", "content": d}]}) for d in docs[6:]]
    (tmp_path / "b.jsonl").write_text("\n".join(lines))
    data = prepare_data([str(tmp_path)], tokenizer, seq_len=32, eval_fraction=0.2, seed=1)
    assert data.documents == 12 and data.files == [str(tmp_path / n) for n in ("a.txt", "b.jsonl")]
    blocks = torch.cat([data.train, data.heldout])
    assert blocks.shape == (data.tokens // 32, 32)
    assert data.heldout.shape[0] == round(0.2 * blocks.shape[0])
    eos = (blocks == tokenizer.eos_token_id).sum().item()
    assert 10 <= eos <= 12, "one EOS per document (a dropped tail may hold the last ones)"
    rendered = list(iter_documents(tmp_path / "b.jsonl", tokenizer))[-1]
    assert rendered == (f"<|user|> {docs[-1]}\n", True), "chat records use the chat template"
    text = tokenizer.decode(blocks.flatten().tolist())
    assert text.count("<|user|>") >= 4, "(a marker may straddle two shuffled blocks)"


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("e.txt", "", "holds no text"),
        ("bad.jsonl", '{"text": "a"}\n{oops\n', r"bad.jsonl line 2: not valid JSON"),
        ("odd.jsonl", '{"prompt": "a"}\n', r"line 1: a record needs `text`"),
        ("chat.jsonl", '{"messages": "hi"}\n', r"`messages` must be a list"),
        ("short.txt", "alpha beta", r"enough for 0 block\(s\) of seq_len=64"),
    ],
)
def test_bad_data_is_a_task_file_error(tmp_path, tokenizer, name, content, needle) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(TaskFileError, match=needle):
        prepare_data([str(tmp_path / name)], tokenizer, seq_len=64, eval_fraction=0.1, seed=0)


def test_missing_and_undecodable_files(tmp_path: Path, tokenizer) -> None:
    with pytest.raises(TaskFileError, match="does not exist"):
        prepare_data([str(tmp_path / "nope.txt")], tokenizer, seq_len=8, eval_fraction=0.1, seed=0)
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00abc")
    with pytest.raises(TaskFileError, match="is not UTF-8"):
        prepare_data([str(tmp_path / "bin.txt")], tokenizer, seq_len=8, eval_fraction=0.1, seed=0)


def test_split_is_disjoint_and_batches_cover_each_epoch() -> None:
    blocks = torch.arange(50).view(10, 5)
    train, held = split_blocks(blocks, 0.2, seed=3)
    ids = sorted(train[:, 0].tolist() + held[:, 0].tolist())
    assert ids == blocks[:, 0].tolist() and held.shape[0] == 2
    assert split_blocks(blocks[:2], 0.9, seed=0)[0].shape[0] == 1, "one block left to train"
    order = BatchOrder(num_blocks=7, batch_size=2, grad_accum=2, seed=5)
    seen = [i for step in range(7) for micro in range(2) for i in order.indices(step, micro)]
    for epoch in range(4):
        assert sorted(seen[epoch * 7 : epoch * 7 + 7]) == list(range(7))
    fresh = BatchOrder(num_blocks=7, batch_size=2, grad_accum=2, seed=5)
    assert fresh.indices(5, 1) == order.indices(5, 1), "a pure function of (step, micro)"


def test_hidden_kl_equals_the_kl_of_full_logits() -> None:
    """Chunked head + KL from hidden states = distillation_loss on materialised logits."""
    from agentrt.dms.retrofit.loss import hidden_kl

    gen = torch.Generator().manual_seed(0)
    head_s = torch.nn.Linear(8, 50)
    head_t = torch.nn.Linear(8, 50)
    hs = torch.randn(2, 37, 8, generator=gen, requires_grad=True)
    ht = torch.randn(2, 37, 8, generator=gen)
    valid = torch.rand(2, 37, generator=gen) > 0.2
    full = distillation_loss(head_s(hs), head_t(ht), valid)
    (g_full,) = torch.autograd.grad(full, hs)
    chunked = hidden_kl(head_s, head_t, hs, ht, valid, chunk_rows=10)
    (g_chunk,) = torch.autograd.grad(chunked, hs)
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_chunk, g_full, rtol=1e-4, atol=1e-7)
