"""Shared options: every setting has an AGENTRT_* mirror, and a flag wins over its variable."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from agentrt.cli.options import resolve_settings, setting_source, settings_options


@click.command()
@settings_options
@click.pass_context
def show(ctx: click.Context, **_options: str | None) -> None:
    """Print the resolved settings and where each came from."""
    settings = resolve_settings(ctx)
    names = ("home", "db", "model", "device")
    click.echo(
        json.dumps(
            {
                "home": str(settings.home),
                "db": settings.db_url,
                "model": settings.model,
                "device": settings.device,
                "sources": {name: setting_source(ctx, name) for name in names},
            }
        )
    )


def _show(*args: str) -> dict:
    """Invoke `show` and parse its JSON."""
    result = CliRunner().invoke(show, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_defaults_come_from_the_environment_set_by_conftest(agentrt_home: Path) -> None:
    out = _show()
    assert out["home"] == str(agentrt_home)
    assert out["db"] == f"sqlite:///{agentrt_home / 'agentrt.db'}"
    assert out["model"] == "smollm2-135m-instruct" and out["device"] == "auto"
    assert out["sources"] == {"home": "env", "db": "env", "model": "default", "device": "default"}


def test_flags_win_over_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTRT_MODEL", "env/model")
    monkeypatch.setenv("AGENTRT_DEVICE", "cuda")
    flag_home = tmp_path / "flag-home"
    args = ["--home", str(flag_home), "--db", "sqlite://", "--model", "m", "--device", "cpu"]
    out = _show(*args)
    assert out["home"] == str(flag_home)
    assert (out["db"], out["model"], out["device"]) == ("sqlite://", "m", "cpu")
    assert set(out["sources"].values()) == {"flag"}


def test_environment_mirrors_every_option(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AGENTRT_HOME", str(tmp_path / "h"))
    monkeypatch.delenv("AGENTRT_DB")
    monkeypatch.setenv("AGENTRT_MODEL", "env/model")
    monkeypatch.setenv("AGENTRT_DEVICE", "CUDA:1")
    out = _show()
    assert out["home"] == str(tmp_path / "h")
    assert out["db"] == f"sqlite:///{tmp_path / 'h' / 'agentrt.db'}"
    assert (out["model"], out["device"]) == ("env/model", "cuda:1")
    assert out["sources"] == {"home": "env", "db": "default", "model": "env", "device": "env"}


def test_home_flag_moves_the_default_database(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("AGENTRT_DB")
    out = _show("--home", str(tmp_path / "elsewhere"))
    assert out["db"] == f"sqlite:///{tmp_path / 'elsewhere' / 'agentrt.db'}"


@pytest.mark.parametrize(
    ("args", "origin"), [(["--device", "tpu"], "--device"), ([], "AGENTRT_DEVICE")]
)
def test_bad_device_is_a_config_error_naming_its_origin(
    monkeypatch: pytest.MonkeyPatch, args: list[str], origin: str
) -> None:
    monkeypatch.setenv("AGENTRT_DEVICE", "tpu")
    result = CliRunner().invoke(show, args)
    assert result.exception is not None
    assert type(result.exception).__name__ == "ConfigError"
    assert origin in str(result.exception)


def test_help_lists_the_environment_mirrors() -> None:
    result = CliRunner().invoke(show, ["--help"])
    assert result.exit_code == 0
    for var in ("AGENTRT_HOME", "AGENTRT_DB", "AGENTRT_MODEL", "AGENTRT_DEVICE"):
        assert var in result.output
