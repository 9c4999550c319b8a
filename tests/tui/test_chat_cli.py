"""`agentrt chat` on the command line: help without a model, option errors as AgentRTError."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from agentrt.cli.main import cli
from agentrt.errors import ConfigError
from agentrt.tui.commands import parse_slash


def test_chat_help_lists_the_options() -> None:
    result = CliRunner().invoke(cli, ["chat", "--help"])
    assert result.exit_code == 0, result.output
    for option in ("--model", "--session", "--new", "--system", "--tools", "--home"):
        assert option in result.output


def test_session_and_new_together_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["chat", "-s", "a", "--new", "b"])
    assert result.exit_code == 2, result.output
    assert "either --session or --new" in result.output


def test_slash_commands_parse() -> None:
    assert parse_slash("hello") is None
    assert parse_slash("//not a command") is None
    cmd = parse_slash("/fork side branch")
    assert (cmd.name, cmd.arg) == ("fork", "side branch")
    assert parse_slash("/SAVE").name == "save"
    with pytest.raises(ConfigError, match="unknown command /nope"):
        parse_slash("/nope")
