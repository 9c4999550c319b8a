"""Folders agentrt creates are 0700 whatever the umask (a umask of 000 included)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from agentrt.cli.main import cli
from agentrt.sessions import SessionStore, open_catalog


@pytest.fixture
def open_umask() -> Iterator[None]:
    """Run the test under umask 000."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def modes(root: Path) -> dict[str, int]:
    """Mode bits of every folder below `root`."""
    return {
        str(p.relative_to(root)): p.stat().st_mode & 0o777 for p in root.rglob("*") if p.is_dir()
    }


def test_a_new_catalog_creates_private_folders(tmp_path: Path, open_umask: None) -> None:
    SessionStore(open_catalog(f"sqlite:///{tmp_path / 'd' / 'e' / 'agentrt.db'}")).close()
    assert modes(tmp_path) == {"d": 0o700, "d/e": 0o700}
    assert (tmp_path / "d" / "e" / "agentrt.db").stat().st_mode & 0o777 == 0o600


def test_doctor_fix_creates_private_folders(tmp_path: Path, open_umask: None) -> None:
    home = tmp_path / "a" / "b" / "home"
    result = CliRunner().invoke(
        cli, ["doctor", "--fix", "--home", str(home), "--db", f"sqlite:///{home / 'x.db'}"]
    )
    assert home.is_dir(), result.output
    assert modes(tmp_path) == {"a": 0o700, "a/b": 0o700, "a/b/home": 0o700}


def test_db_upgrade_creates_private_folders(tmp_path: Path, open_umask: None) -> None:
    home = tmp_path / "a" / "home"
    db = f"sqlite:///{home / 'x.db'}"
    result = CliRunner().invoke(cli, ["db", "upgrade", "--home", str(home), "--db", db])
    assert result.exit_code == 0, result.output
    assert modes(tmp_path) == {"a": 0o700, "a/home": 0o700}
