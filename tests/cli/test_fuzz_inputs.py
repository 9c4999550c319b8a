"""Fuzzing (hypothesis) of the archive importer and of every CLI option that takes a size, a
device or a session name: whatever the input, a clear AgentRTError or usage error, never a
traceback. No model is loaded: validation fails first (or the model folder is empty).

1,000 cases in all (500 archives, 250 size/device pairs, 250 name pairs), reproducible.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentrt.cli.main import cli
from agentrt.errors import AgentRTError
from agentrt.sessions import SessionStore, open_catalog
from agentrt.sessions.archive import (
    ARCHIVE_FORMAT,
    ARCHIVE_VERSION,
    MANIFEST,
    create_copy,
    prepare_import,
)
from agentrt.sessions.layout import SessionLayout


def fuzz(examples: int) -> settings:
    """Hypothesis settings of one fuzz test: `examples` cases, reproducible, no deadline."""
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        derandomize=True,
        database=None,
    )


json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
SESSION_KEYS = ["name", "model", "fingerprint", "tokens", "slots", "kv_bytes",
                "compression_ratio", "dms_config", "tags", "pinned", "status"]  # fmt: skip
MESSAGE_KEYS = ["role", "content", "tool_calls", "token_start", "token_end"]
GOOD_SESSION = {
    "name": "fuzzed",
    "model": "m",
    "fingerprint": "f" * 64,
    "tokens": 3,
    "slots": 3,
    "kv_bytes": 10,
    "compression_ratio": 1.0,
    "pinned": False,
    "tags": ["t"],
}


def clean(result: Result) -> None:
    """No traceback: success, an AgentRTError's exit, or click's usage error."""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(
            f"uncaught {result.exception!r}\n{result.output}"
        ) from result.exception
    assert "Traceback" not in result.output


@pytest.fixture
def catalogued(agentrt_home: Path) -> str:
    """A catalogued session without checkpoint whose model folder is empty (nothing loads)."""
    folder = agentrt_home.parent / "empty-model"
    folder.mkdir()
    store = SessionStore(open_catalog(os.environ["AGENTRT_DB"]))
    store.create_session("sess", str(folder), "f" * 64, {})
    store.close()
    return "sess"


@fuzz(500)
@given(
    session=st.dictionaries(st.sampled_from(SESSION_KEYS), json_values, max_size=4),
    messages=st.lists(
        st.dictionaries(st.sampled_from(MESSAGE_KEYS), json_values, max_size=5)
        | st.fixed_dictionaries(
            {"role": st.sampled_from(["user", "assistant"]), "content": json_values}
        )
        | json_values,
        max_size=3,
    ),
    raw=st.none() | st.binary(max_size=40),
)
def test_fuzz_archive_importer(
    session: dict[str, Any], messages: list[Any], raw: bytes | None, tmp_path: Path
) -> None:
    if raw is not None:
        data = raw
    else:
        manifest = {
            "format": ARCHIVE_FORMAT,
            "format_version": ARCHIVE_VERSION,
            "session": {**GOOD_SESSION, **session},
            "messages": messages,
            "checkpoints": [],
        }
        data = json.dumps(manifest, allow_nan=True).encode()
    path = tmp_path / f"{uuid.uuid4().hex}.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(MANIFEST)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    home = tmp_path / "home"
    store = SessionStore(open_catalog(f"sqlite:///{home / 'agentrt.db'}"))
    try:
        copy = prepare_import(path, f"as-{uuid.uuid4().hex[:12]}", store)
        created = create_copy(store, SessionLayout.under(home), copy)
        info_ = store.get_session(created.id)
        assert isinstance(info_.pinned, bool) and all(isinstance(t, str) for t in info_.tags)
        assert all(isinstance(m.content, str) for m in store.messages(created.id))
    except AgentRTError:
        pass
    finally:
        store.close()
        path.unlink()


sizes = (
    st.text(max_size=12)
    | st.from_regex(r"\A-?\d{0,25}(\.\d{0,3})?\s?([KMGTkmgt]i?[Bb]?|[Bb])?\Z")
    | st.integers(min_value=-(2**70), max_value=2**70).map(str)
)
devices = (
    st.text(max_size=10)
    | st.sampled_from(["cpu", "cuda", "auto", "mps", "meta", "CPU", "cuda:0", "cuda:-1"])
    | st.integers(min_value=-3, max_value=99).map(lambda n: f"cuda:{n}")
)
names = st.text(max_size=30) | st.from_regex(r"\A[0-9a-f-]{8,40}\Z")


@fuzz(250)
@given(size=sizes, device=devices)
def test_fuzz_kv_budget_and_device_flags(size: str, device: str, catalogued: str) -> None:
    clean(CliRunner().invoke(cli, ["resume", catalogued, "--device", device, "--kv-budget", size]))
    result = CliRunner().invoke(
        cli,
        ["bench", "throughput", "--device", device, "--kv-budget", size, "--model", "/nonexistent"],
    )
    clean(result)


@fuzz(250)
@given(name=names, new=names)
def test_fuzz_session_names(name: str, new: str, catalogued: str, tmp_path: Path) -> None:
    for args in (
        ["sessions", "show", name],
        ["sessions", "fork", name, new],
        ["sessions", "fork", catalogued, new],
        ["sessions", "export", name, str(tmp_path / "x.tar.gz"), "--force"],
        ["resume", name, "--device", "cpu"],
    ):
        clean(CliRunner().invoke(cli, args))
