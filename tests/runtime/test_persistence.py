"""Sessions survive restarts: save, reopen in a new process, continue exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from agentrt import Engine
from agentrt.dms import DMSConfig, load_model
from agentrt.engine.persistence import AutosavePolicy
from agentrt.errors import CheckpointError, SessionError
from tests.dms.serving_helpers import tiny_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", params=["qneuron", "adapter"])
def model_dir(request, tmp_path_factory):
    """A tiny DMS model saved as an HF folder (both flavours)."""
    offset = 5.0 if request.param == "qneuron" else 0.5
    model = tiny_model(flavour=request.param, window=3, offset=offset)
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path)
    return path


def _engine(model_dir, tmp_path, **kw):
    return Engine.from_pretrained(
        model_dir,
        device="cpu",
        num_blocks=2000,
        block_size=4,
        home=tmp_path / "home",
        db=f"sqlite:///{tmp_path / 'home' / 'agentrt.db'}",
        **kw,
    )


def _run_worker(model_dir, tmp_path, name, mode):
    out = tmp_path / f"{name}-{mode}.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.runtime.resume_worker",
            str(model_dir),
            str(tmp_path / "home"),
            f"sqlite:///{tmp_path / 'home' / 'agentrt.db'}",
            name,
            str(out),
            mode,
        ],
        check=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    return json.loads(out.read_text())


@pytest.mark.parametrize("mode", ["greedy", "sample"])
def test_resume_in_a_new_process_is_exact(model_dir, tmp_path, mode):
    """Multi-turn session → save → new process reopens and continues = never having stopped."""
    sampling = {"temperature": 0.9, "top_p": 0.95} if mode == "sample" else {}
    eng = _engine(model_dir, tmp_path)
    s = eng.new_session("chat", seed=11)
    s.prefill(list(range(3, 30)))
    list(s.generate(5, **sampling))
    s.prefill([40, 41])
    list(s.generate(4, **sampling))  # ends with a sampled-but-unfed token
    eng.save(s)
    # the twin that never stops
    logits = s.prefill([7, 8, 9])
    tokens = list(s.generate(8, **sampling))
    eng.close()
    got = _run_worker(model_dir, tmp_path, "chat", mode)
    assert got["tokens"] == tokens
    torch.testing.assert_close(torch.tensor(got["logits"]), logits, atol=1e-5, rtol=1e-5)


def test_restore_into_another_block_size(model_dir, tmp_path):
    """A checkpoint restores into a pool with a different block size with the same logits."""
    eng = _engine(model_dir, tmp_path)
    s = eng.new_session("b", seed=1)
    s.prefill(list(range(50)))
    eng.save(s)
    ref = s.prefill([1, 2, 3])
    eng.close()
    other = Engine.from_pretrained(
        model_dir,
        device="cpu",
        num_blocks=500,
        block_size=16,
        home=tmp_path / "home",
        db=f"sqlite:///{tmp_path / 'home' / 'agentrt.db'}",
    )
    torch.testing.assert_close(
        other.open_session("b").prefill([1, 2, 3]), ref, atol=1e-5, rtol=1e-5
    )


def test_second_engine_cannot_open_a_session_held_by_the_first(model_dir, tmp_path):
    """One writer per saved session across engines/processes."""
    a = _engine(model_dir, tmp_path)
    s = a.new_session("held")
    s.prefill([1, 2, 3])
    a.save(s)
    b = _engine(model_dir, tmp_path)
    with pytest.raises(SessionError, match="open in another agentrt process"):
        b.open_session("held")
    s.close()
    assert b.open_session("held").tokens == [1, 2, 3]


def test_wrong_model_is_refused_with_the_difference_named(model_dir, tmp_path):
    """Reopening with another DMS window (or other weights) names the part that differs."""
    eng = _engine(model_dir, tmp_path)
    s = eng.new_session("fp")
    s.prefill([1, 2, 3, 4])
    eng.save(s)
    eng.close()
    base = load_model(model_dir)
    other = Engine(
        load_model(model_dir, dms=base.dms.replace(window_size=5)),
        num_blocks=500,
        block_size=4,
        home=tmp_path / "home",
        db=f"sqlite:///{tmp_path / 'home' / 'agentrt.db'}",
    )
    with pytest.raises(CheckpointError, match="dms_config"):
        other.open_session("fp")


def test_missing_blob_is_reported(model_dir, tmp_path):
    """A deleted checkpoint file gives a CheckpointError and is marked missing in the catalog."""
    eng = _engine(model_dir, tmp_path)
    s = eng.new_session("gone")
    s.prefill([5, 6])
    row = eng.save(s)
    eng.close()
    (tmp_path / "home" / row.file).unlink()
    again = _engine(model_dir, tmp_path)
    with pytest.raises(CheckpointError, match="missing"):
        again.open_session("gone")
    assert again.persistence.store.checkpoints(row.session_id)[0].missing


def test_autosave_every_turn_and_on_close(model_dir, tmp_path):
    """Autosave writes a checkpoint after each turn and on close."""
    eng = _engine(model_dir, tmp_path, autosave=AutosavePolicy(every_turns=1))
    s = eng.new_session("auto")
    s.prefill([1, 2, 3])
    list(s.generate(2))
    store = eng.persistence.store
    first = len(store.checkpoints(s.db_id))
    assert first >= 2
    s.prefill([4])
    eng.close()
    assert len(store.checkpoints(s.db_id)) > first


def test_checkpoint_size_follows_slots_not_tokens(tmp_path):
    """With ~90% of tokens evicted, the file is far smaller than a dense cache would be."""
    model = tiny_model(window=4, offset=-120.0)
    model.save_pretrained(tmp_path / "m")
    eng = _engine(tmp_path / "m", tmp_path)
    s = eng.new_session("small")
    s.prefill(torch.randint(0, 97, (400,), generator=torch.Generator().manual_seed(0)).tolist())
    row = eng.save(s)
    st = s.stats()
    per_slot = eng.pool.spec.bytes_per_slot
    dense = st["tokens"] * 4 * per_slot
    assert st["compression_ratio"] > 4
    assert row.size_bytes < dense / 3
    assert row.size_bytes < 2 * st["slots"] * per_slot + 400 * 8 + 64 * 1024


def test_dms_config_override_changes_fingerprint(model_dir):
    """Sanity: the override really differs (guards the wrong-model test)."""
    base = load_model(model_dir)
    assert base.dms != base.dms.replace(window_size=5) and isinstance(base.dms, DMSConfig)
