"""No database password reaches the terminal: `doctor` (text and JSON) and `db status`."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from agentrt.cli import cli

LEAKY_URLS = [
    # the password in the query string
    ("postgresql://alice@127.0.0.1:1/agentrt?password=S3cretPW", "S3cretPW"),
    # an unescaped '@' inside the password: its tail must not show up as the host
    ("postgresql://alice:S3cr@tPW@127.0.0.1:1/agentrt", "tPW"),
    ("postgresql://alice:S3cr@tPW@127.0.0.1:1/agentrt", "S3cr"),
]


@pytest.mark.parametrize(("url", "secret"), LEAKY_URLS)
@pytest.mark.parametrize("args", [["doctor"], ["doctor", "--json"], ["db", "status"]])
def test_database_passwords_are_never_printed(
    url: str, secret: str, args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTRT_DB", url)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0 or "database" in result.output  # unreachable server: an error
    assert secret not in result.output, result.output
