"""The repository's top-level `kernels/` folder never shadows Hugging Face's `kernels` package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_bare_kernels_resolves_past_the_source_tree_when_hf_kernels_is_installed() -> None:
    import importlib.util

    from agentrt._hf_kernels import HFKernelsFinder

    spec = HFKernelsFinder().find_spec("kernels")
    assert str(ROOT) in [str(Path(p or ".").resolve()) for p in sys.path]  # pytest put it there
    hf = importlib.util.find_spec("kernels")
    if spec is None:  # HF's package is not installed: our finder steps aside
        assert hf is not None and Path(hf.origin).parent == ROOT / "kernels"
    else:
        assert Path(spec.origin).parent != ROOT / "kernels"
    assert HFKernelsFinder().find_spec("dms") is None


@pytest.mark.parametrize("module", ["transformers.activations"])
def test_python_dash_m_from_the_repository_root_imports_transformers(module: str) -> None:
    code = f"import agentrt, {module}, sys; print(sys.modules.get('kernels'))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert str(ROOT / "kernels") not in out.stdout
