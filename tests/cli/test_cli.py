"""`agentrt --version`, `--help` and `agentrt doctor` on this machine."""

from __future__ import annotations

import importlib.metadata
import json
import platform
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import transformers
from click.testing import CliRunner, Result

from agentrt import __version__
from agentrt.cli.main import cli
from agentrt.errors import ConfigError, DatabaseError


def invoke(*args: str) -> Result:
    """Run the production CLI in-process."""
    return CliRunner().invoke(cli, list(args))


def doctor_json(*args: str) -> tuple[int, dict]:
    """Run `agentrt doctor --json` and parse its report."""
    result = invoke("doctor", "--json", *args)
    return result.exit_code, json.loads(result.stdout)


def test_version_matches_the_distribution() -> None:
    result = invoke("--version")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"agentrt, version {__version__}\n"
    assert __version__ == importlib.metadata.version("agentrt")


def test_help_lists_commands_env_vars_and_exit_codes() -> None:
    result = invoke("--help")
    assert result.exit_code == 0, result.output
    for text in ("doctor", "--verbose", "--quiet", "AGENTRT_HOME", "AGENTRT_DB", "Exit codes"):
        assert text in result.stdout


def test_console_script_is_installed(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "agentrt"
    assert script.exists(), f"no console script next to {sys.executable}"
    proc = subprocess.run(
        [str(script), "--version"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"agentrt, version {__version__}"


def test_doctor_on_a_fresh_home_is_usable_and_creates_nothing(agentrt_home: Path) -> None:
    result = invoke("doctor")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"torch          ok    {torch.__version__}" in out
    assert f"transformers   ok    {transformers.__version__}" in out
    assert platform.python_version() in out
    assert "default model  info  smollm2-135m-instruct: not prepared yet; GGUF from pip" in out
    assert "model          info  smollm2-135m-instruct" in out
    assert "not created yet" in out
    assert out.rstrip().endswith("agentrt is usable here.")
    assert result.stderr == ""
    assert not agentrt_home.exists()


def test_doctor_json_reports_versions_and_settings(agentrt_home: Path) -> None:
    code, report = doctor_json()
    assert code == 0
    checks = report["checks"]
    assert report["usable"] is True and report["problems"] == [] and report["agentrt"]
    assert checks["python"]["version"] == platform.python_version()
    assert checks["torch"]["version"] == torch.__version__
    assert checks["torch"]["cuda_available"] == torch.cuda.is_available()
    assert len(checks["gpu"]["gpus"]) == (
        torch.cuda.device_count() if torch.cuda.is_available() else 0
    )
    assert checks["transformers"]["version"] == transformers.__version__
    assert checks["transformers"]["version"].startswith("5.")
    assert checks["home"] == {**checks["home"], "path": str(agentrt_home), "source": "env"}
    assert checks["database"]["url"] == f"sqlite:///{agentrt_home / 'agentrt.db'}"
    assert checks["default_model"]["prepared"] is False
    assert checks["model"]["model"] == "smollm2-135m-instruct"
    assert {c["status"] for c in checks.values()} <= {"ok", "info", "warn"}
    assert not agentrt_home.exists()


def test_doctor_shows_the_model_that_would_be_served(
    agentrt_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTRT_MODEL", "/my/model")  # the variable wins over the default
    assert "model          info  /my/model" in invoke("doctor").stdout
    code, report = doctor_json("--model", "other-flag")
    assert code == 0 and report["checks"]["model"]["model"] == "other-flag"


def test_doctor_fix_creates_home_0700_and_migrates(agentrt_home: Path) -> None:
    result = invoke("doctor", "--fix")
    assert result.exit_code == 0, result.output
    assert f"fixed: created {agentrt_home} (mode 0700)" in result.stdout
    assert agentrt_home.is_dir() and agentrt_home.stat().st_mode & 0o777 == 0o700
    assert (agentrt_home / "agentrt.db").is_file()
    code, report = doctor_json()
    db = report["checks"]["database"]
    assert code == 0
    assert db["reachable"] is True and db["up_to_date"] is True
    assert db["revision"] == db["head"] and db["status"] == "ok"
    again = invoke("doctor", "--fix")
    assert again.exit_code == 0 and "fixed:" not in again.stdout, again.output


def test_doctor_flags_win_over_environment(tmp_path: Path) -> None:
    flag_home = tmp_path / "flag-home"
    code, report = doctor_json("--home", str(flag_home), "--db", "sqlite://")
    assert code == 0
    assert report["checks"]["home"]["path"] == str(flag_home)
    assert report["checks"]["home"]["source"] == "flag"
    assert report["checks"]["database"]["source"] == "flag"
    assert report["checks"]["database"]["reachable"] is True


def _impossible_sqlite_url(tmp_path: Path) -> tuple[str, Path]:
    """A SQLite URL below a regular file: not creatable, even for root."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    return f"sqlite:///{blocker / 'agentrt.db'}", blocker


def test_doctor_with_unreachable_database_fails_with_exit_9(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, blocker = _impossible_sqlite_url(tmp_path)
    monkeypatch.setenv("AGENTRT_DB", url)
    result = invoke("doctor")
    assert result.exit_code == DatabaseError.exit_code == 9, result.output
    assert "database       FAIL" in result.stdout
    assert "agentrt is NOT usable here." in result.stdout
    assert result.stderr.startswith(f"agentrt: database error: {url}: ")
    assert f"{blocker} is not a folder" in result.stderr
    assert "\n  hint: " in result.stderr
    assert "Traceback" not in result.output


def test_doctor_json_with_unreachable_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTRT_DB", _impossible_sqlite_url(tmp_path)[0])
    code, report = doctor_json()
    assert code == 9
    assert report["usable"] is False
    assert report["checks"]["database"]["reachable"] is False
    assert [p["check"] for p in report["problems"]] == ["database"]
    assert report["problems"][0]["exit_code"] == 9


def test_doctor_never_prints_a_database_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTRT_DB", "postgresql://agent:hunter2@127.0.0.1:1/agentrt")
    result = invoke("doctor")
    assert result.exit_code == 9, result.output
    assert "hunter2" not in result.output
    assert "agent:***@127.0.0.1" in result.output


def test_doctor_with_unusable_home_fails_with_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("AGENTRT_HOME", str(blocker))
    monkeypatch.setenv("AGENTRT_DB", "sqlite://")
    result = invoke("doctor")
    assert result.exit_code == ConfigError.exit_code, result.output
    assert result.stderr.startswith(f"agentrt: configuration error: {blocker} (env): ")


def test_doctor_rejects_an_unknown_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTRT_DEVICE", "tpu")
    result = invoke("doctor")
    assert result.exit_code == ConfigError.exit_code
    assert "unknown device 'tpu' (from AGENTRT_DEVICE)" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_doctor_fails_when_cuda_is_asked_for_but_absent() -> None:
    result = invoke("doctor", "--device", "cuda")
    assert result.exit_code == ConfigError.exit_code
    assert "cuda: CUDA is not available" in result.stderr


def test_quiet_doctor_prints_nothing_when_usable() -> None:
    result = invoke("-q", "doctor")
    assert result.exit_code == 0
    assert result.output == ""


def test_doctor_reports_gpus_name_memory_and_capability(monkeypatch: pytest.MonkeyPatch) -> None:
    props = SimpleNamespace(name="NVIDIA H100 80GB HBM3", total_memory=80 * 2**30, major=9, minor=0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    result = invoke("doctor")
    assert result.exit_code == 0, result.output
    assert "CUDA 12.8 available" in result.stdout
    assert "cuda:0 NVIDIA H100 80GB HBM3, 80.0 GiB, sm_90; cuda:1 NVIDIA H100" in result.stdout
    assert "auto -> cuda" in result.stdout
    code, report = doctor_json()
    assert code == 0
    assert report["checks"]["gpu"]["gpus"][1] == {
        "index": 1,
        "name": "NVIDIA H100 80GB HBM3",
        "memory_bytes": 80 * 2**30,
        "capability": "9.0",
    }
