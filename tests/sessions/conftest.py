"""Fixtures of the sessions tests.

The autouse `agentrt_home` fixture of tests/conftest.py already points AGENTRT_HOME and
AGENTRT_DB at tmp_path; these fixtures build catalogs inside that home.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agentrt.sessions import SessionStore, open_catalog


@pytest.fixture
def db_url(agentrt_home: Path) -> str:
    """SQLite URL of a catalog that does not exist yet."""
    return f"sqlite:///{agentrt_home / 'agentrt.db'}"


@pytest.fixture
def store(db_url: str) -> Iterator[SessionStore]:
    """A store on a freshly migrated SQLite catalog."""
    catalog = SessionStore(open_catalog(db_url))
    yield catalog
    catalog.close()


@pytest.fixture
def session_kwargs() -> dict[str, object]:
    """Arguments of a typical `create_session` call, minus the name."""
    return {
        "model": "tiny-llama",
        "fingerprint": "f" * 64,
        "dms_config": {"dms_window_size": 16, "dms_alpha_per": "head"},
    }
