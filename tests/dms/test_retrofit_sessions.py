"""Retrofit runs that span sessions and the layer-local objective, on the tiny Qwen3.

Continuing from a checkpoint folder copied elsewhere (`resume_from`), starting from
committed adapters (`init_adapters`), time-based checkpoints, held-out files packed at
their own length, and the layer-local objective (its split hinge equals the joint loss).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from agentrt.dms.retrofit import Retrofitter, retrofit
from agentrt.dms.retrofit.adapter_files import read_adapter_folder
from agentrt.dms.retrofit.checkpoint import list_checkpoints
from agentrt.dms.retrofit.config import RetrofitConfig
from agentrt.dms.retrofit.data import prepare_data
from agentrt.dms.retrofit.layer_local import dense_layer_cache, layer_local_step
from agentrt.dms.retrofit.loss import noise_seed
from agentrt.errors import ConfigError, TaskFileError

from .test_retrofit import build_model_dir, corpus, make_config, read_log, write_text_data

ADAPTERS = "adapters/adapters.safetensors"


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    """One intra-op thread for the module."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(model folder, text data file)."""
    root = tmp_path_factory.mktemp("tiny-sessions")
    return build_model_dir(root), write_text_data(root)


def _same_adapters(a: Path, b: Path) -> bool:
    ta, tb = load_file(str(a)), load_file(str(b))
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_resume_from_a_copied_checkpoint_continues_bit_exact(tiny, tmp_path) -> None:
    """Session 1 stops at 3 updates; its checkpoint is copied (as into the repository) and
    session 2 continues into a new folder with moved model and data paths: same result."""
    model, data = tiny
    common = dict(steps=6, ramp_steps=4, grad_accum=2, batch_size=2)
    retrofit(make_config(model, data, tmp_path / "a", **common), progress=False)
    retrofit(make_config(model, data, tmp_path / "b", **{**common, "steps": 3}), progress=False)
    committed = tmp_path / "repo" / "training"
    shutil.copytree(list_checkpoints(tmp_path / "b")[-1][1], committed)
    moved_model = shutil.copytree(model, tmp_path / "moved-model")
    moved_data = tmp_path / "moved.txt"
    shutil.copy(data, moved_data)
    cfg = make_config(moved_model, moved_data, tmp_path / "c", **common, resume_from=str(committed))
    report = retrofit(cfg, progress=False)
    assert _same_adapters(tmp_path / "a" / ADAPTERS, tmp_path / "c" / ADAPTERS)
    assert [x["step"] for x in read_log(tmp_path / "c")] == [3, 4, 5]
    assert [x["kl"] for x in read_log(tmp_path / "c")] == [
        x["kl"] for x in read_log(tmp_path / "a")[3:]
    ]
    assert report["steps"] == 6
    # Run again with the same command: the newer checkpoint in c wins over the committed one.
    assert Retrofitter(cfg, progress=False).step == 6


def test_resume_from_refuses_a_different_recipe_and_a_missing_state(tiny, tmp_path) -> None:
    model, data = tiny
    retrofit(make_config(model, data, tmp_path / "a", steps=2), progress=False)
    ckpt = list_checkpoints(tmp_path / "a")[-1][1]
    with pytest.raises(ConfigError, match="window: checkpoint 4, now 3"):
        Retrofitter(make_config(model, data, tmp_path / "b", window=3, resume_from=str(ckpt)))
    with pytest.raises(ConfigError, match="holds no trainer_state.pt"):
        Retrofitter(make_config(model, data, tmp_path / "c", resume_from=str(tmp_path)))


def test_init_adapters_starts_a_new_schedule_from_given_adapters(tiny, tmp_path) -> None:
    model, data = tiny
    retrofit(make_config(model, data, tmp_path / "a", steps=4, ramp_steps=2), progress=False)
    run = Retrofitter(
        make_config(model, data, tmp_path / "b", init_adapters=str(tmp_path / "a/adapters"))
    )
    assert run.step == 0
    given, _ = read_adapter_folder(tmp_path / "a/adapters")
    state = run.model.hf.state_dict()
    assert all(torch.equal(state[k], v) for k, v in given.items())
    with pytest.raises(ConfigError, match="init_adapters"):
        make_config(model, data, tmp_path / "c", flavour="qneuron", init_adapters="x")


def test_time_based_checkpoints(tiny, tmp_path) -> None:
    model, data = tiny
    retrofit(
        make_config(model, data, tmp_path / "a", steps=3, save_every_minutes=1e-9), progress=False
    )
    assert [s for s, _ in list_checkpoints(tmp_path / "a")] == [1, 2, 3]


def test_heldout_files_are_packed_at_their_own_length(tiny, tmp_path, monkeypatch) -> None:
    model, data = tiny
    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps({"text": d}) + "\n" for d in corpus(20, seed=9)))
    cfg = make_config(
        model, data, tmp_path / "o", heldout_data=(str(held),), eval_seq_len=128, steps=2
    )
    report = retrofit(cfg, progress=False)
    assert report["train"]["heldout_seq_len"] == 128
    assert report["heldout"]["tokens"] == 3 * 128
    run_data = prepare_data(
        cfg.data,
        _tokenizer(model),
        seq_len=64,
        eval_fraction=0.1,
        seed=0,
        heldout=(str(held),),
        eval_seq_len=128,
    )
    whole = prepare_data(cfg.data, _tokenizer(model), seq_len=64, eval_fraction=0.1, seed=0)
    assert run_data.train.shape[0] == whole.train.shape[0] + whole.heldout.shape[0]
    assert run_data.heldout.shape[1] == 128
    with pytest.raises(ConfigError, match="eval_seq_len=128 needs heldout_data"):
        make_config(model, data, tmp_path / "x", eval_seq_len=128)
    (tmp_path / "tiny.txt").write_text("alpha")
    with pytest.raises(TaskFileError, match="held-out data has"):
        prepare_data(
            cfg.data,
            _tokenizer(model),
            seq_len=64,
            eval_fraction=0.1,
            seed=0,
            heldout=(str(tmp_path / "tiny.txt"),),
        )


def _tokenizer(model: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model)


# -- layer-local objective --------------------------------------------------------------------


def test_layer_local_gradient_equals_the_joint_loss(tiny, tmp_path) -> None:
    """Per-layer backward with the split hinge = autograd of mean_l mse_l + hinge in one graph."""
    model, data = tiny
    run = Retrofitter(make_config(model, data, tmp_path / "o", objective="layer_local"))
    with torch.no_grad():
        for p in run.trainable:
            p.normal_(0, 0.05) if p.dim() == 2 else None
    ids = run.data.train[:2]
    cache = dense_layer_cache(run.model, ids)
    seed = noise_seed(42, 0, 0)
    for target in (0.9, 0.0):  # hinge active / inactive
        for p in run.trainable:
            p.grad = None
        stats = layer_local_step(run.model, cache, seed, target)
        split = [p.grad.clone() for p in run.trainable]
        for p in run.trainable:
            p.grad = None
        joint = _joint_loss(run, cache, seed, target)
        joint.backward()
        assert stats["layer_mse"] + stats["compression_loss"] == pytest.approx(
            joint.item(), rel=1e-5
        )
        for a, p in zip(split, run.trainable, strict=True):
            torch.testing.assert_close(a, p.grad, atol=1e-7, rtol=1e-4)


def _joint_loss(run: Retrofitter, cache, seed: int, target: float) -> torch.Tensor:
    """The layer-local loss written as one graph (the definition the split must equal)."""
    import torch.nn.functional as F

    from agentrt.dms.block_attention import dms_tile_attention
    from agentrt.dms.gating import logistic_noise, soft_decisions
    from agentrt.dms.masks import key_flags
    from agentrt.dms.projections import project_layer

    model = run.model
    gen = torch.Generator().manual_seed(seed)
    mses, fracs = [], []
    noise = []
    for layer, h in zip(model.hf.model.layers, cache.inputs, strict=True):
        qkv = project_layer(layer, h, cache.cos, cache.sin, model.arch, model.dms)
        noise.append(logistic_noise(tuple(qkv.logits.shape), gen, h.device))
    for layer, h, t, eps in zip(
        model.hf.model.layers, cache.inputs, cache.targets, noise, strict=True
    ):
        qkv = project_layer(layer, h, cache.cos, cache.sin, model.arch, model.dms)
        soft = soft_decisions(qkv.logits, eps, model.dms.tau, model.dms.alpha_per)
        out = dms_tile_attention(
            qkv.q.transpose(1, 2),
            qkv.k.transpose(1, 2),
            qkv.v.transpose(1, 2),
            F.logsigmoid(-key_flags(soft.u)).transpose(1, 2),
            model.dms.window_size,
            scale=layer.self_attn.scaling,
        )
        s = layer.self_attn.o_proj(out.transpose(1, 2).reshape(h.shape[0], h.shape[1], -1))
        mses.append((s - t).square().sum(-1).mean() / t.square().sum(-1).mean())
        fracs.append(soft.hard.mean(dim=(1, 2)))
    evicted = torch.stack(fracs).mean(0)
    return torch.stack(mses).mean() + torch.clamp(target - evicted, min=0).mean()


def test_layer_local_run_follows_the_schedule(tiny, tmp_path) -> None:
    model, data = tiny
    cfg = make_config(model, data, tmp_path / "o", objective="layer_local", steps=30, lr=3e-3)
    report = retrofit(cfg, progress=False)
    log = read_log(tmp_path / "o")
    assert "layer_mse" in log[0] and "kl" not in log[0]
    frac = sum(x["eviction_fraction"] for x in log[-5:]) / 5
    assert frac > 0.4, f"eviction {frac:.3f} for target 0.5"
    assert report["objective"] == "layer_local" and report["heldout"]["compression_ratio"] > 1.3
    assert report["heldout"]["kl_to_teacher"] < 0.5
    with pytest.raises(ConfigError, match="layer_local trains adapters only"):
        RetrofitConfig(model="m", data=("d",), out="o", objective="layer_local", flavour="qneuron")


# -- the measuring scripts -----------------------------------------------------------------


def test_train_eval_serves_adapters_at_several_lengths(tiny, tmp_path) -> None:
    from agentrt.models.train_eval import evaluate

    model, data = tiny
    retrofit(make_config(model, data, tmp_path / "a", steps=20, ramp_steps=10), progress=False)
    result = evaluate(str(model), str(tmp_path / "a/adapters"), [str(data)], [64, 128], 2, 0)
    assert set(result["lengths"]) == {"64", "128"} and result["window"] == 4
    for row in result["lengths"].values():
        assert row["blocks"] == 2 and row["compression_ratio"] > 1.0 and row["kl_to_dense"] >= 0


def test_train_bench_measures_one_update(tiny, capsys) -> None:
    from agentrt.models.train_bench import main

    model, data = tiny
    args = ["--model", str(model), "--data", str(data), "--seq-len", "64", "--window", "4"]
    assert main([*args, "--steps", "1", "--warmup", "0"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["attention"] == "tiled" and row["tokens_per_s"] > 0 and row["peak_rss_gb"] > 0


def test_save_model_also_writes_a_servable_folder(tiny, tmp_path) -> None:
    from agentrt.dms import load_model

    model, data = tiny
    retrofit(make_config(model, data, tmp_path / "a", steps=2, save_model=True), progress=False)
    served = load_model(tmp_path / "a")
    assert served.dms.flavour == "adapter"
    saved, _ = read_adapter_folder(tmp_path / "a/adapters")
    state = served.hf.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items())
