"""The LoRA delta beside the DMS adapters: hooks vs merged weights, training, serving, refusals.

A rank-r LoRA on q/k/v/o trains with the adapters (`lora_rank`), is switched off for the
dense teacher, is written into the adapter folder with its rank and scale, and is merged
into the weights when the folder is served; the merged model computes what the hooked one
does, and its fingerprint says that the weights changed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from agentrt.dms.loader import load_model
from agentrt.dms.lora import attach_lora, lora_disabled, lora_info, merge_lora
from agentrt.dms.retrofit import Retrofitter, retrofit
from agentrt.dms.retrofit.adapter_files import apply_adapter_folder
from agentrt.dms.retrofit.report import dense_teacher, serve_block
from agentrt.errors import ConfigError, ModelLoadError
from agentrt.sessions import model_fingerprint

from .test_retrofit import (
    build_model_dir,
    make_config,
    one_thread,  # noqa: F401 (its autouse fixture: one torch thread)
    write_text_data,
)
from .tiny_models import clone, random_ids, tiny_hf

ADAPTERS = "adapters"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(model folder, text data file)."""
    root = tmp_path_factory.mktemp("tiny-lora")
    return build_model_dir(root), write_text_data(root)


@pytest.fixture(scope="module")
def lora_run(tiny, tmp_path_factory) -> tuple[Retrofitter, dict[str, Any]]:
    """A 6-update layer-local run with a rank-4 LoRA, trained and reported."""
    model, data = tiny
    out = tmp_path_factory.mktemp("lora") / "out"
    cfg = make_config(
        model, data, out, steps=6, ramp_steps=4, objective="layer_local", lora_rank=4, lora_lr=3e-3
    )
    run = Retrofitter(cfg, progress=False)
    run.train()
    return run, run.finish()


@pytest.mark.parametrize("arch", ["llama-gqa", "qwen2-bias"])
def test_the_hooked_lora_starts_at_the_base_and_equals_its_merged_weights(arch: str) -> None:
    base = tiny_hf(arch)
    ids = random_ids(2, 12)
    with torch.no_grad():
        want = base(ids).logits
        hooked = clone(base)
        attach_lora(hooked, rank=3, scale=2.0, seed=1)
        assert torch.equal(hooked(ids).logits, want)  # B = 0: the delta is exactly zero
        gen = torch.Generator().manual_seed(5)
        tensors = {}
        for name, param in hooked.named_parameters():
            if "dms_lora_b" in name:
                param.copy_(0.05 * torch.randn(param.shape, generator=gen))
            if "dms_lora_" in name:
                tensors[name] = param.detach().clone()
        got = hooked(ids).logits
        assert (got - want).abs().max() > 1e-3  # the delta acts
        with lora_disabled(hooked):
            assert torch.equal(hooked(ids).logits, want)
        merged = clone(base)
        digest = merge_lora(merged, tensors, 2.0)
        torch.testing.assert_close(merged(ids).logits, got, atol=2e-5, rtol=0)
    assert lora_info(hooked) == {
        "rank": 3,
        "scale": 2.0,
        "targets": ["q_proj", "k_proj", "v_proj", "o_proj"],
    }
    assert lora_info(base) is None and len(digest) == 64


def test_a_lora_run_trains_adapters_and_lora_only_and_writes_both(lora_run, tiny) -> None:
    run, report = lora_run
    folder = run.out / ADAPTERS
    saved = load_file(str(folder / "adapters.safetensors"))
    lora = {k for k in saved if "dms_lora_" in k}
    assert len(lora) == 2 * 4 * 2  # 2 layers × q/k/v/o × (A, B)
    meta = json.loads((folder / "dms_config.json").read_text())["lora"]
    assert meta == {"rank": 4, "scale": 4.0, "targets": ["q_proj", "k_proj", "v_proj", "o_proj"]}
    assert report["lora"]["rank"] == 4
    assert report["trainable_parameters"] == sum(t.numel() for t in saved.values())
    assert any(saved[k].abs().max() > 0 for k in lora if k.endswith("dms_lora_b"))
    # The base weights never moved.
    model, _ = tiny
    fresh = load_model(model, device="cpu").hf.state_dict()
    state = run.model.hf.state_dict()
    assert all(torch.equal(state[k], v) for k, v in fresh.items())
    # Two optimizer groups: adapters at lr, the LoRA at lora_lr.
    assert [g["lr"] for g in run.optimizer.param_groups] == [3e-3, 3e-3]


def test_served_with_the_lora_merged_equals_the_hooked_model(lora_run, tiny) -> None:
    """load_model(adapters=…) merges the LoRA into the weights; the engine path (merged) and
    the training path (hooks) serve the same logits with the same evictions."""
    run, _ = lora_run
    model, _ = tiny
    folder = run.out / ADAPTERS
    merged = load_model(model, device="cpu", adapters=folder)
    hooked = load_model(model, dms=run.cfg.dms_config(), device="cpu")
    apply_adapter_folder(hooked, folder)
    assert lora_info(merged.hf) is None and lora_info(hooked.hf)["rank"] == 4
    ids = random_ids(1, 48, seed=3)[0]
    got, got_stats = serve_block(merged, ids)
    want, want_stats = serve_block(hooked, ids)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    assert got_stats["slots"] == want_stats["slots"]
    # The dense teacher is the base model, not the LoRA'd one.
    base = load_model(model, device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(
            dense_teacher(hooked)(ids[None]), base.hf(ids[None]).logits, atol=1e-5, rtol=0
        )
    # The fingerprint names the merged delta, so a session saved without it is refused.
    adapters_only = load_model(model, device="cpu", adapters=run.out / "plain")
    parts_with = model_fingerprint(merged, model_dir=Path(model)).parts
    parts_without = model_fingerprint(adapters_only, model_dir=Path(model)).parts
    assert "weight_delta" in parts_with and "weight_delta" not in parts_without


@pytest.fixture(scope="module", autouse=True)
def _plain_copy(lora_run) -> None:
    """out/plain: the run's adapter folder without its LoRA (for the fingerprint check)."""
    run, _ = lora_run
    src, dst = run.out / ADAPTERS, run.out / "plain"
    dst.mkdir(exist_ok=True)
    tensors = load_file(str(src / "adapters.safetensors"))
    save_file(
        {k: v for k, v in tensors.items() if "dms_lora_" not in k},
        str(dst / "adapters.safetensors"),
    )
    cfg = json.loads((src / "dms_config.json").read_text())
    cfg.pop("lora")
    (dst / "dms_config.json").write_text(json.dumps(cfg))


def test_a_lora_run_resumes_bit_exact(tiny, tmp_path) -> None:
    model, data = tiny
    common = dict(steps=4, ramp_steps=2, objective="layer_local", lora_rank=2, lora_lr=3e-3)
    retrofit(make_config(model, data, tmp_path / "a", **common), progress=False)
    retrofit(make_config(model, data, tmp_path / "b", **{**common, "steps": 2}), progress=False)
    retrofit(make_config(model, data, tmp_path / "b", **common, resume=True), progress=False)
    ta = load_file(str(tmp_path / "a" / ADAPTERS / "adapters.safetensors"))
    tb = load_file(str(tmp_path / "b" / ADAPTERS / "adapters.safetensors"))
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_a_lora_run_starts_from_adapter_only_weights(lora_run, tiny, tmp_path) -> None:
    """init_adapters from a folder without a LoRA: its adapters load, the LoRA starts at zero."""
    run, _ = lora_run
    model, data = tiny
    cfg = make_config(
        model, data, tmp_path / "o", lora_rank=2, init_adapters=str(run.out / "plain")
    )
    fresh = Retrofitter(cfg, progress=False)
    given = load_file(str(run.out / "plain" / "adapters.safetensors"))
    state = fresh.model.hf.state_dict()
    assert all(torch.equal(state[k], v) for k, v in given.items())
    assert all(state[k].abs().max() == 0 for k in state if k.endswith("dms_lora_b"))


def test_lora_options_are_checked(tiny, tmp_path) -> None:
    model, data = tiny
    with pytest.raises(ConfigError, match="lora_rank"):
        make_config(model, data, tmp_path / "a", lora_rank=-1)
    with pytest.raises(ConfigError, match="lora_rank.*flavour"):
        make_config(model, data, tmp_path / "a", lora_rank=4, flavour="qneuron")
    with pytest.raises(ConfigError, match="save_model"):
        make_config(model, data, tmp_path / "a", lora_rank=4, save_model=True)
    with pytest.raises(ConfigError, match="lora_lr"):
        make_config(model, data, tmp_path / "a", lora_rank=4, lora_lr=0.0)


def test_a_broken_lora_folder_is_refused(lora_run, tiny, tmp_path) -> None:
    run, _ = lora_run
    model, _ = tiny
    src = run.out / ADAPTERS
    no_meta = shutil.copytree(src, tmp_path / "no-meta")
    cfg = json.loads((no_meta / "dms_config.json").read_text())
    cfg.pop("lora")
    (no_meta / "dms_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="disagree"):
        load_model(model, device="cpu", adapters=no_meta)
    wrong = shutil.copytree(src, tmp_path / "wrong-rank")
    cfg = json.loads((wrong / "dms_config.json").read_text())
    cfg["lora"]["rank"] = 3
    (wrong / "dms_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="LoRA tensors do not fit"):
        load_model(model, device="cpu", adapters=wrong)
