"""Bad flags, archives and API arguments end in a clear AgentRTError with README's exit code.

None of these load a model: budgets and devices are checked first.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner, Result

from agentrt import Engine
from agentrt.cli.main import cli
from agentrt.errors import BudgetError, ConfigError, SessionError
from agentrt.sessions import SessionStore, open_catalog
from agentrt.sessions.archive import ARCHIVE_FORMAT, ARCHIVE_VERSION, MANIFEST
from tests.dms.serving_helpers import tiny_model

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def invoke(*args: str) -> Result:
    """Run the production CLI in-process."""
    return CliRunner().invoke(cli, list(args))


def assert_clean(result: Result, code: int) -> None:
    """The command failed with `code` and printed an error line, not a traceback."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, AssertionError | IndexError | RuntimeError)
    assert "agentrt:" in result.output


@pytest.fixture
def catalogued(tmp_path: Path) -> str:
    """A catalogued session whose recorded model is a folder (nothing loads it)."""
    folder = tmp_path / "not-read"
    folder.mkdir()
    store = SessionStore(open_catalog(os.environ["AGENTRT_DB"]))
    store.create_session("sess", str(folder), "f" * 64, {})
    store.close()
    return "sess"


@no_cuda
def test_resume_on_a_device_this_machine_lacks(catalogued: str) -> None:
    result = invoke("resume", catalogued, "--device", "cuda")
    assert_clean(result, 2)
    assert "no CUDA" in result.output


def test_resume_with_a_budget_larger_than_memory(catalogued: str) -> None:
    assert_clean(invoke("resume", catalogued, "--device", "cpu", "--kv-budget", "100TiB"), 5)
    assert_clean(invoke("resume", catalogued, "--device", "cpu", "--kv-budget", "lots"), 2)
    assert_clean(invoke("resume", catalogued, "--device", "cpu", "--kv-budget", "0"), 5)


def test_bench_throughput_refuses_bad_levels_and_budgets() -> None:
    assert_clean(invoke("bench", "throughput", "--device", "cpu", "--kv-budget", "9999TiB"), 5)
    for levels in ("0,-1", "1,x", ","):
        result = invoke("bench", "throughput", "--device", "cpu", "--concurrency", levels)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output


def test_doctor_on_a_home_that_cannot_be_created() -> None:
    for extra in ([], ["--fix"]):
        result = invoke("doctor", "--home", "/proc/forbidden/home", *extra)
        assert_clean(result, 2)
        assert "agentrt is usable here" not in result.output
    assert not Path("/proc/forbidden").exists()


def archive(path: Path, session: dict[str, Any], messages: list[Any]) -> Path:
    """A session archive with no checkpoints and this manifest."""
    manifest = {
        "format": ARCHIVE_FORMAT,
        "format_version": ARCHIVE_VERSION,
        "session": {
            "name": "imported",
            "model": "m",
            "fingerprint": "f" * 64,
            "tokens": 3,
            "slots": 3,
            "kv_bytes": 10,
            "compression_ratio": 1.0,
            **session,
        },
        "messages": messages,
        "checkpoints": [],
    }
    data = json.dumps(manifest).encode()
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(MANIFEST)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


BAD_MANIFESTS = {
    "tokens-string": ({"tokens": "abc"}, []),
    "tags-number": ({"tags": 12}, []),
    "pinned-string": ({"pinned": "false"}, []),
    "ratio-nan": ({"compression_ratio": float("nan")}, []),
    "no-content": ({}, [{"role": "user"}]),
    "content-dict": ({}, [{"role": "user", "content": {"a": 1}}]),
    "bad-role": ({}, [{"role": "robot", "content": "hi"}]),
    "message-string": ({}, ["hi"]),
}


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_malformed_archives_exit_4_and_write_nothing(
    case: str, tmp_path: Path, agentrt_home: Path
) -> None:
    session, messages = BAD_MANIFESTS[case]
    path = archive(tmp_path / f"{case}.tar.gz", session, messages)
    result = invoke("sessions", "import", str(path))
    assert_clean(result, 4)
    listed = invoke("sessions", "ls", "--json")
    assert listed.exit_code == 0 and "imported" not in listed.output


def test_a_well_formed_archive_imports_with_its_pinned_flag(tmp_path: Path) -> None:
    path = archive(
        tmp_path / "ok.tar.gz",
        {"pinned": False, "tags": ["a"]},
        [{"role": "user", "content": "hi", "token_start": 0, "token_end": 3}],
    )
    result = invoke("sessions", "import", str(path))
    assert result.exit_code == 0, result.output
    store = SessionStore(open_catalog(os.environ["AGENTRT_DB"]))
    try:
        info = store.get_session("imported")
        assert info.pinned is False and list(info.tags) == ["a"]
    finally:
        store.close()


# -- the Python API ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model():
    """A tiny in-memory DMS model (max_position_embeddings 16384)."""
    return tiny_model(window=3, offset=5.0)


def test_engine_budget_zero_is_refused(model) -> None:
    with pytest.raises(BudgetError, match="zero"):
        Engine(model, kv_budget=0)
    with pytest.raises(BudgetError, match="more than"):
        Engine(model, kv_budget="9999TiB")
    with pytest.raises(ConfigError):
        Engine(model, kv_budget="-1GiB")


def test_token_ids_must_be_ints(model) -> None:
    eng = Engine(model, num_blocks=200, block_size=4)
    try:
        s = eng.new_session("api")
        for bad in ([1.9], ["5"], [True], "abc", 7, [None], torch.tensor([1.0])):
            with pytest.raises(SessionError):
                s.prefill(bad)  # type: ignore[arg-type]
        assert s.tokens == []
        s.prefill(torch.tensor([3, 4], dtype=torch.int32))
        for bad_n in (1.5, "3", True):
            with pytest.raises(ConfigError, match="max_new_tokens"):
                s.generate(bad_n)  # type: ignore[arg-type]
        with pytest.raises(SessionError, match="max_position_embeddings"):
            s.prefill([5] * 16384)
        assert s.tokens == [3, 4]
    finally:
        eng.close()
