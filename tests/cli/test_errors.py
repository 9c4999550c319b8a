"""The CLI's error contract: `agentrt: <title>: <message>` on stderr, documented exit codes."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from agentrt import errors
from agentrt.cli.main import EXIT_INTERRUPTED, cli
from agentrt.errors import AgentRTError

REPO = Path(__file__).resolve().parents[2]


def _all_error_classes() -> list[type[AgentRTError]]:
    """AgentRTError and every subclass defined in agentrt.errors."""
    return [AgentRTError, *(c for c in vars(errors).values() if _is_subclass(c))]


def _is_subclass(obj: object) -> bool:
    """Whether obj is a proper subclass of AgentRTError."""
    return isinstance(obj, type) and issubclass(obj, AgentRTError) and obj is not AgentRTError


ERROR_CLASSES = _all_error_classes()


def group_with(command: click.Command) -> click.Group:
    """A copy of the production group with one extra command (the original is untouched)."""
    group = copy.copy(cli)
    group.commands = {**cli.commands, command.name or "extra": command}
    return group


def raising(exc: BaseException) -> click.Command:
    """A throwaway command named `fail` that raises exc."""

    @click.command(name="fail")
    def fail() -> None:
        raise exc

    return fail


def test_group_copy_leaves_production_group_alone() -> None:
    group_with(raising(RuntimeError("x")))
    assert "fail" not in cli.commands


def test_exit_codes_are_distinct_and_documented_in_errors() -> None:
    codes = {cls.__name__: cls.exit_code for cls in ERROR_CLASSES}
    assert codes == errors.EXIT_CODES
    subclass_codes = [cls.exit_code for cls in ERROR_CLASSES if cls is not AgentRTError]
    assert len(set(subclass_codes)) == len(subclass_codes), codes
    assert all(0 < code < 126 for code in codes.values()), codes


@pytest.mark.parametrize("doc", ["docs/CLI.md", "README.md"])
def test_exit_code_table_matches_errors(doc: str) -> None:
    text = (REPO / doc).read_text(encoding="utf-8")
    for cls in ERROR_CLASSES:
        row = re.search(rf"^\|\s*{cls.exit_code}\s*\|[^\n]*`{cls.__name__}`", text, re.M)
        assert row, f"{doc} has no exit-code row `| {cls.exit_code} | ... {cls.__name__}`"
    assert re.search(rf"^\|\s*{EXIT_INTERRUPTED}\s*\|", text, re.M), f"{doc} lacks 130"


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_agentrt_error_prints_title_message_hint_and_exits_with_its_code(
    cls: type[AgentRTError],
) -> None:
    group = group_with(raising(cls("the thing broke", hint="do this instead")))
    result = CliRunner().invoke(group, ["fail"])
    assert result.exit_code == cls.exit_code, result.output
    assert result.stderr == f"agentrt: {cls.title}: the thing broke\n  hint: do this instead\n"
    assert result.stdout == ""
    assert "Traceback" not in result.output


def test_error_without_hint_prints_one_line() -> None:
    group = group_with(raising(errors.TaskFileError("line 3: key 'model' is missing")))
    result = CliRunner().invoke(group, ["fail"])
    assert result.exit_code == errors.TaskFileError.exit_code
    assert result.stderr == "agentrt: task file error: line 3: key 'model' is missing\n"


def test_verbose_shows_the_traceback_before_the_message() -> None:
    group = group_with(raising(errors.ConfigError("bad value", hint="fix it")))
    result = CliRunner().invoke(group, ["-v", "fail"])
    assert result.exit_code == errors.ConfigError.exit_code
    assert "Traceback (most recent call last)" in result.stderr
    assert "agentrt.errors.ConfigError: bad value" in result.stderr
    assert result.stderr.endswith("agentrt: configuration error: bad value\n  hint: fix it\n")


def test_unexpected_exception_is_not_converted() -> None:
    group = group_with(raising(RuntimeError("a bug")))
    result = CliRunner().invoke(group, ["fail"])
    assert result.exit_code == 1
    assert isinstance(result.exception, RuntimeError)
    assert "agentrt:" not in result.stderr


def test_keyboard_interrupt_exits_130() -> None:
    result = CliRunner().invoke(group_with(raising(KeyboardInterrupt())), ["fail"])
    assert result.exit_code == EXIT_INTERRUPTED
    assert "agentrt: interrupted" in result.stderr


def test_usage_error_exits_2() -> None:
    result = CliRunner().invoke(cli, ["--no-such-flag"])
    assert result.exit_code == 2
    assert "No such option" in result.stderr


_SCRIPT = """
import copy, sys
import click
from agentrt.cli.main import cli

@click.command(name="fail")
def fail():
    if sys.argv[1] == "bug":
        raise RuntimeError("a bug")
    from agentrt.errors import CheckpointError
    raise CheckpointError("sha256 mismatch", hint="restore from an older checkpoint")

group = copy.copy(cli)
group.commands = {**cli.commands, "fail": fail}
group(sys.argv[2:], prog_name="agentrt")
"""


def _run_script(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the throwaway group in a real process (real stderr, real exit status)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_SCRIPT), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_real_process_bug_keeps_its_traceback(tmp_path: Path) -> None:
    proc = _run_script(tmp_path, "bug", "fail")
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.rstrip().endswith("RuntimeError: a bug")


def test_real_process_agentrt_error_exit_status_and_stderr(tmp_path: Path) -> None:
    proc = _run_script(tmp_path, "user", "fail")
    assert proc.returncode == errors.CheckpointError.exit_code, proc.stderr
    assert proc.stderr == (
        "agentrt: checkpoint error: sha256 mismatch\n  hint: restore from an older checkpoint\n"
    )
    assert proc.stdout == ""
