"""A command that fails writes nothing and prints nothing misleading first."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

from agentrt import Engine
from agentrt.cli.main import cli
from tests.dms.serving_helpers import tiny_model


def test_fork_of_an_unknown_session_creates_no_home_or_database(tmp_path: Path) -> None:
    home = tmp_path / "fresh-home"
    db = f"sqlite:///{home / 'agentrt.db'}"
    result = CliRunner().invoke(
        cli, ["sessions", "fork", "nosuch", "new", "--home", str(home), "--db", db]
    )
    assert result.exit_code == 8, result.output
    assert "nosuch" in result.output and not home.exists()


def test_db_status_of_an_unreachable_server_prints_no_revision() -> None:
    db = "postgresql+psycopg://u:secret@127.0.0.1:1/agentrt?connect_timeout=2"
    result = CliRunner().invoke(cli, ["db", "status", "--db", db])
    assert result.exit_code == 9, result.output
    assert "revision" not in result.output and "secret" not in result.output
    assert "unreachable" in result.output


def test_an_interrupted_step_logs_what_happened(caplog: pytest.LogCaptureFixture) -> None:
    eng = Engine(tiny_model(window=3, offset=5.0), num_blocks=200, block_size=4)
    s = eng.new_session("ctrl-c")
    real_step = eng.model.step

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    eng.model.step = interrupted  # type: ignore[method-assign]
    try:
        with caplog.at_level(logging.WARNING, "agentrt.engine"), pytest.raises(KeyboardInterrupt):
            s.prefill([3, 4, 5])
        messages = [r.getMessage() for r in caplog.records]
        assert any("interrupted (Ctrl-C)" in m for m in messages), messages
        assert not any(r.levelno >= logging.ERROR for r in caplog.records), messages
        assert not any(m.rstrip().endswith(":") for m in messages), messages
    finally:
        eng.model.step = real_step  # type: ignore[method-assign]
        eng.close()
