"""The default model: `AGENTRT_MODEL`, else the demo model bundled in the package.

A tiny DMS model saved into a temporary folder stands in for `agentrt/data/demo-model`
(the real one ships once it is trained, docs/DEMO_MODEL.md); `bundled_model` is pointed
at it, so settings, the Engine and the CLI resolve it exactly as they would the real one.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from agentrt.cli.main import cli
from agentrt.errors import ModelLoadError
from agentrt.settings import BUNDLED_MODEL, ENV_MODEL, bundled_model, load_settings
from tests.evals.helpers import tiny_eval_model


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny DMS model (adapter flavour, window 8) with the small demo tokenizer."""
    out = tmp_path_factory.mktemp("bundled") / "demo-model"
    tiny_eval_model(dms=True, window=8).save_pretrained(out)
    return out


@pytest.fixture
def bundled(tiny_folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Pretend this install ships `tiny_folder` as its demo model; AGENTRT_MODEL unset."""
    monkeypatch.setattr("agentrt.settings.bundled_model", lambda: tiny_folder)
    monkeypatch.delenv(ENV_MODEL, raising=False)
    return tiny_folder


def test_bundled_model_is_the_package_folder_only_when_it_holds_a_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import agentrt.settings as settings

    fake_module = tmp_path / "agentrt" / "settings.py"
    fake_module.parent.mkdir()
    monkeypatch.setattr(settings, "__file__", str(fake_module))
    assert bundled_model() is None  # folder absent
    folder = tmp_path / "agentrt" / BUNDLED_MODEL
    folder.mkdir(parents=True)
    assert bundled_model() is None  # folder without config.json
    (folder / "config.json").write_text("{}")
    assert bundled_model() == folder


def test_precedence_flag_then_environment_then_bundled(
    bundled: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert load_settings().model == str(bundled)
    monkeypatch.setenv(ENV_MODEL, "/somewhere/else")
    assert load_settings().model == "/somewhere/else"
    assert load_settings(model="flag-wins").model == "flag-wins"


def test_engine_without_a_model_serves_the_bundled_one(
    bundled: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agentrt import Engine

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    eng = Engine.from_pretrained(device="cpu", kv_budget="8MiB")
    try:
        assert eng.model.evicting and eng.model.dms.window_size == 8
        session = eng.new_session()
        session.prefill(list(range(5, 40)))
        out = list(session.generate(max_new_tokens=4, temperature=0.0))
        assert len(out) == 4 and session.stats()["tokens"] == 35 + 3
    finally:
        eng.close()


def test_engine_without_any_model_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    from agentrt import Engine

    monkeypatch.setattr("agentrt.settings.bundled_model", lambda: None)
    monkeypatch.delenv(ENV_MODEL, raising=False)
    with pytest.raises(ModelLoadError, match="no bundled demo model") as err:
        Engine.from_pretrained(device="cpu")
    assert "AGENTRT_MODEL" in (err.value.hint or "")


def test_eval_without_model_flag_uses_the_bundled_model(bundled: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli,
        ["-q", "eval", "--tasks", "niah", "--lengths", "300", "--policies", "dense,dms",
         "--n", "1", "--max-new-tokens", "2", "--device", "cpu", "--out", str(tmp_path)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    import json

    data = json.loads((tmp_path / "eval.json").read_text())
    assert data["config"]["model"] == str(bundled) and data["config"]["dms_window"] == 8
