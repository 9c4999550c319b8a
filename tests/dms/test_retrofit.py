"""`agentrt.dms.retrofit`: training runs on a tiny Qwen3 (schedule, frozen base, resume, report).

The tiny model (hidden 64, 2 layers, 4 query / 2 KV heads, head_dim 16) and its byte-level
BPE tokenizer are built here from a synthetic corpus; nothing is downloaded. Runs use one
CPU thread: at these sizes intra-op threads only add overhead on a shared 2-core machine.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen3Config

from agentrt.dms import load_model
from agentrt.dms.adapters import ADAPTER_MARKER
from agentrt.dms.dense_forward import dense_forward
from agentrt.dms.gating import hard_decisions
from agentrt.dms.masks import expand_to_query_heads, visibility_mask
from agentrt.dms.retrofit import REPORT_FILE, RetrofitConfig, Retrofitter, retrofit
from agentrt.dms.retrofit.adapter_files import apply_adapter_folder
from agentrt.dms.retrofit.checkpoint import list_checkpoints
from agentrt.dms.retrofit.data import prepare_data
from agentrt.dms.retrofit.loss import token_kl, valid_positions
from agentrt.dms.retrofit.report import serve_block
from agentrt.dms.retrofit.trainer import LOG_FILE
from agentrt.dms.serving import StepItem
from agentrt.errors import BudgetError, ConfigError, ModelLoadError

WORDS = "alpha beta gamma delta cache token model window evict keep agent tool call step".split()
CHAT_TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }}\n{% endfor %}"
SCHEDULE_TOL = 0.06  # |eviction fraction − target| over the last 5 updates of a run


def corpus(n_docs: int = 40, seed: int = 0) -> list[str]:
    """Documents of random sentences over a small word list."""
    rng = random.Random(seed)
    return [
        " ".join(
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) + "."
            for _ in range(rng.randint(3, 8))
        )
        for _ in range(n_docs)
    ]


def make_tokenizer(docs: list[str]) -> PreTrainedTokenizerFast:
    """A byte-level BPE (320 tokens, `<eos>`) trained on docs, with a small chat template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model_dir(root: Path, seed: int = 0) -> Path:
    """A tiny random-weight Qwen3 + tokenizer saved as an HF folder under root."""
    tok = make_tokenizer(corpus())
    cfg = Qwen3Config(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            param.copy_(1 + 0.1 * noise if "norm" in name else 0.15 * noise)
    path = root / "model"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def write_text_data(root: Path) -> Path:
    """The corpus as one plain-text file (≈ 2.2k tokens: 34 blocks of 64)."""
    path = root / "data.txt"
    path.write_text("\n\n".join(corpus()), encoding="utf-8")
    return path


def make_config(model: Path, data: Path, out: Path, **overrides: Any) -> RetrofitConfig:
    """A CPU-sized run: window 4, seq_len 64, CR 1 → 2, adapter lr 3e-3."""
    values: dict[str, Any] = dict(
        model=str(model),
        data=(str(data),),
        out=str(out),
        window=4,
        seq_len=64,
        target_cr=2.0,
        steps=40,
        ramp_steps=20,
        lr=3e-3,
        batch_size=4,
        save_every=0,
        eval_fraction=0.1,
        max_eval_blocks=3,
        device="cpu",
    )
    return RetrofitConfig(**{**values, **overrides})


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    """Run this module on one intra-op thread, restored afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(model folder, text data file) shared by the module."""
    root = tmp_path_factory.mktemp("tiny")
    return build_model_dir(root), write_text_data(root)


@pytest.fixture(scope="module")
def adapter_run(tiny, tmp_path_factory) -> tuple[Retrofitter, dict[str, Any]]:
    """A 40-update adapter run (CR 1 → 2 over 20 updates, then held), trained and reported."""
    model, data = tiny
    cfg = make_config(model, data, tmp_path_factory.mktemp("adapter") / "out", save_every=20)
    run = Retrofitter(cfg, progress=False)
    run.train()
    return run, run.finish()


def read_log(out: Path) -> list[dict[str, Any]]:
    """The JSONL training log of a run."""
    return [json.loads(line) for line in (out / LOG_FILE).read_text().splitlines()]


# -- a run -------------------------------------------------------------------------------


def test_eviction_follows_the_schedule(adapter_run) -> None:
    run, _ = adapter_run
    log = read_log(run.out)
    assert [line["step"] for line in log] == list(range(40))
    for line in log:
        assert line["cr_target"] == pytest.approx(run.cfg.cr_at(line["step"]))
        assert line["target_fraction"] == pytest.approx(1 - 1 / line["cr_target"])
    assert log[0]["eviction_fraction"] < 0.05, "zero-initialised adapters start near no eviction"
    assert log[10]["eviction_fraction"] > 0.2, "eviction rises with the ramp"
    tail = log[-5:]
    frac = sum(line["eviction_fraction"] for line in tail) / 5
    assert abs(frac - 0.5) < SCHEDULE_TOL, f"final eviction {frac:.3f}, target 0.5"
    kl = sum(line["kl"] for line in tail) / 5
    assert 0 < kl < 0.3, f"KL to the teacher {kl:.3f} nats/token"


def test_learned_decisions_beat_random_ones_at_the_same_rate(adapter_run) -> None:
    """Distillation taught *which* tokens to evict: shuffling each stream's decisions in time
    (same count per layer, head and sequence) raises the KL to the teacher."""
    run, _ = adapter_run
    model, ids = run.model, run.data.train

    def kl_with(shuffle: torch.Generator | None) -> float:
        def mask_fn(logits, seq, device):
            dec = hard_decisions(logits)  # [B, T, H]
            if shuffle is not None:
                order = torch.rand(dec.shape, generator=shuffle).argsort(dim=1)
                dec = torch.gather(dec, 1, order)
            mask = visibility_mask(dec, model.dms.window_size)
            return expand_to_query_heads(mask, model.arch.group_size), dec

        with torch.no_grad():
            logits, _ = dense_forward(model.hf, model.arch, model.dms, ids, None, mask_fn)
            teacher = model.forward_train(ids, noise_seed=None, teacher=True).logits
        return token_kl(logits, teacher).mean().item()

    learned = kl_with(None)
    shuffled = [kl_with(torch.Generator().manual_seed(k)) for k in range(4)]
    assert learned < min(shuffled), f"learned {learned:.4f} vs shuffled {shuffled}"


def test_adapter_flavour_leaves_the_base_weights_untouched(adapter_run, tiny) -> None:
    """Only the adapters train, and only they are written: out/adapters/ holds no base tensor."""
    run, _ = adapter_run
    before = load_file(str(tiny[0] / "model.safetensors"))
    state = run.model.hf.state_dict()
    for name, tensor in before.items():
        assert torch.equal(state[name], tensor), f"base weight {name} changed"
    saved = load_file(str(run.out / "adapters" / "adapters.safetensors"))
    assert set(saved) == {k for k in state if ADAPTER_MARKER in k}
    proj = [k for k in saved if k.endswith("dms_proj_alpha.weight")]
    assert len(proj) == 2 and all(saved[k].abs().sum() > 0 for k in proj)
    assert all(saved[k].dtype == torch.float32 for k in saved)
    assert not list(run.out.rglob("model.safetensors")), "the base is never copied"
    trainable = {n for n, p in run.model.hf.named_parameters() if p.requires_grad}
    assert trainable and all(ADAPTER_MARKER in n for n in trainable)
    dms = json.loads((run.out / "adapters" / "dms_config.json").read_text())
    assert dms["dms_separate_alpha"] is True and dms["dms_window_size"] == 4
    assert dms["measured_cr"] == pytest.approx(
        json.loads((run.out / REPORT_FILE).read_text())["heldout"]["compression_ratio"]
    )
    assert (run.out / "adapters" / REPORT_FILE).is_file()


def test_report_matches_serving_the_saved_folder(adapter_run) -> None:
    """Reload the output with load_model, serve the held-out blocks, recompute the report."""
    run, report = adapter_run
    on_disk = json.loads((run.out / REPORT_FILE).read_text())
    assert on_disk["heldout"] == report["heldout"]
    served = load_model(run.cfg.model, dms=run.cfg.dms_config())
    apply_adapter_folder(served, run.out / "adapters")
    assert served.dms == run.cfg.dms_config() and served.evicting
    data = prepare_data(
        run.cfg.data, served.tokenizer, seq_len=64, eval_fraction=0.1, seed=run.cfg.seed
    )
    assert torch.equal(data.heldout, run.data.heldout)
    streams = served.arch.num_layers * served.arch.num_kv_heads
    tokens = slots = 0
    kl_sum, kl_n = 0.0, 0
    for ids in data.heldout[:3]:
        pool = served.make_pool(num_blocks=streams * 4, block_size=16)
        cache = served.new_cache(pool)
        (logits,) = served.step([StepItem(cache, ids, all_logits=True)])
        stats = cache.stats()
        tokens += stats["tokens"] * streams
        slots += stats["slots"]
        cache.free()
        with torch.no_grad():
            teacher = served.forward_train(ids[None], noise_seed=None, teacher=True).logits[0]
        kl = token_kl(logits, teacher)
        valid = valid_positions(ids, data.eos_id)
        kl_sum, kl_n = kl_sum + float(kl[valid].sum()), kl_n + int(valid.sum())
    held = report["heldout"]
    assert held["blocks"] == 3 and held["tokens"] == 3 * 64
    assert held["compression_ratio"] == pytest.approx(tokens / slots, rel=1e-12)
    assert held["compression_ratio"] > 1.3, "the retrofitted model really compresses"
    assert held["kl_to_teacher"] == pytest.approx(kl_sum / kl_n, rel=1e-5)
    assert report["steps"] == 40 and report["schedule"]["final_cr_target"] == 2.0


def test_checkpoints_hold_adapters_and_trainer_state_only(adapter_run) -> None:
    """checkpoint-N = adapters + dms_config + trainer_state (kilobytes); it loads onto the base."""
    run, _ = adapter_run
    found = list_checkpoints(run.out)
    assert [step for step, _ in found] == [20, 40]
    folder = found[0][1]
    assert sorted(p.name for p in folder.iterdir()) == [
        "adapters.safetensors",
        "dms_config.json",
        "trainer_state.pt",
    ]
    assert sum(p.stat().st_size for p in folder.iterdir()) < 100_000
    state = torch.load(folder / "trainer_state.pt", weights_only=True)
    assert state["step"] == 20 and state["data"]["samples_consumed"] == 20 * 4
    assert state["data"]["fingerprint"] == run.data.fingerprint()
    model = load_model(run.cfg.model, dms=run.cfg.dms_config())
    apply_adapter_folder(model, folder)
    assert model.dms.flavour == "adapter"
    ids = run.data.heldout[0]
    logits, stats = serve_block(model, ids)
    assert logits.shape == (64, model.arch.vocab_size) and torch.isfinite(logits).all()
    assert stats["tokens"] == 64


# -- q-neuron flavour ----------------------------------------------------------------------


def test_qneuron_trains_all_weights_and_keeps_the_teacher_fixed(tiny, tmp_path) -> None:
    """At a constant CR 2 the q-neuron student lowers its KL while evicting at least half."""
    model, data = tiny
    cfg = make_config(
        model, data, tmp_path / "out", flavour="qneuron", steps=30, ramp_steps=0, lr=1e-3
    )
    run = Retrofitter(cfg, progress=False)
    assert run.teacher is not None and run.teacher.dms is None, "a dense frozen copy"
    run.train()
    original = load_file(str(model / "model.safetensors"))
    teacher = {k: v for k, v in run.teacher.hf.state_dict().items() if k in original}
    assert teacher.keys() == original.keys()
    assert all(torch.equal(teacher[k], original[k]) for k in original), "teacher moved"
    student = run.model.hf.state_dict()
    changed = [k for k in original if not torch.equal(student[k], original[k])]
    assert len(changed) == len(original), f"unchanged: {set(original) - set(changed)}"
    log = read_log(run.out)
    first, last = log[:5], log[-5:]
    kl_first = sum(line["kl"] for line in first) / 5
    kl_last = sum(line["kl"] for line in last) / 5
    assert kl_last < 0.75 * kl_first, f"KL {kl_first:.3f} → {kl_last:.3f}"
    frac = sum(line["eviction_fraction"] for line in last) / 5
    assert frac > 0.5 - SCHEDULE_TOL


# -- resume --------------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", ["adapter", "qneuron"])
def test_resume_is_bit_exact(tiny, tmp_path, flavour: str) -> None:
    model, data = tiny
    common = dict(flavour=flavour, steps=6, ramp_steps=4, grad_accum=2, batch_size=2)
    straight = make_config(model, data, tmp_path / "a", **common)
    retrofit(straight, progress=False)
    retrofit(make_config(model, data, tmp_path / "b", **{**common, "steps": 3}), progress=False)
    resumed = make_config(model, data, tmp_path / "b", **common, resume=True)
    report = retrofit(resumed, progress=False)
    weights = "adapters/adapters.safetensors" if flavour == "adapter" else "model.safetensors"
    a = load_file(str(tmp_path / "a" / weights))
    b = load_file(str(tmp_path / "b" / weights))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "weights differ after resume"
    log_a, log_b = read_log(tmp_path / "a"), read_log(tmp_path / "b")
    assert [line["step"] for line in log_b] == list(range(6))
    for key in ("loss", "kl", "eviction_fraction", "grad_norm"):
        assert [x[key] for x in log_a] == [x[key] for x in log_b], key
    assert report["heldout"] == json.loads((tmp_path / "a" / REPORT_FILE).read_text())["heldout"]
    opt_a = torch.load(tmp_path / "a/checkpoints/checkpoint-6/trainer_state.pt")["optimizer"]
    opt_b = torch.load(tmp_path / "b/checkpoints/checkpoint-6/trainer_state.pt")["optimizer"]
    for sa, sb in zip(opt_a["state"].values(), opt_b["state"].values(), strict=True):
        assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])


def test_resume_refuses_changed_options_and_fresh_runs_refuse_used_folders(tiny, tmp_path) -> None:
    model, data = tiny
    retrofit(make_config(model, data, tmp_path / "o", steps=2), progress=False)
    with pytest.raises(ConfigError, match="lr: checkpoint 0.003, now 0.01"):
        Retrofitter(make_config(model, data, tmp_path / "o", steps=4, lr=1e-2, resume=True))
    with pytest.raises(ConfigError, match="(?s)not empty.*--resume"):
        Retrofitter(make_config(model, data, tmp_path / "o", steps=4))


# -- memory options and errors -------------------------------------------------------------


def test_gradient_checkpointing_gives_the_same_update(tiny, tmp_path) -> None:
    model, data = tiny
    runs = [
        Retrofitter(make_config(model, data, tmp_path / f"g{on}", gradient_checkpointing=on))
        for on in (False, True)
    ]
    stats = [run.train_step(0) for run in runs]
    assert stats[0] == stats[1]
    for pa, pb in zip(runs[0].trainable, runs[1].trainable, strict=True):
        assert torch.equal(pa, pb)
    mlp = runs[1].model.hf.model.layers[0].mlp
    assert type(mlp).__name__ == "Qwen3MLP", "the MLP swap is undone after the step"


def test_out_of_memory_becomes_a_budget_error(tiny, tmp_path, monkeypatch) -> None:
    model, data = tiny
    run = Retrofitter(make_config(model, data, tmp_path / "o", steps=2), progress=False)

    def boom(step: int) -> dict[str, float]:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(run, "train_step", boom)
    with pytest.raises(BudgetError, match="batch_size=4") as err:
        run.train()
    assert "lower batch_size" in (err.value.hint or "")


def test_seq_len_beyond_the_context_and_unsupported_models(tiny, tmp_path) -> None:
    model, data = tiny
    with pytest.raises(ConfigError, match="seq_len=512 is longer than the model's context"):
        Retrofitter(make_config(model, data, tmp_path / "o", seq_len=512))
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1}))
    with pytest.raises(ModelLoadError, match="'gpt2' is not supported"):
        Retrofitter(make_config(gpt2, data, tmp_path / "o2"))
