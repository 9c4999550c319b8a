"""The repository's top-level `kernels/` folder never shadows Hugging Face's `kernels` package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(code: str) -> subprocess.CompletedProcess[str]:
    """`python -c code` started in the repository root (so the root is on sys.path)."""
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_bare_kernels_resolves_past_the_source_tree_when_hf_kernels_is_installed() -> None:
    """From the repository root, `import kernels` is HF's package, or fails as if absent."""
    import importlib.machinery

    rest = [p for p in sys.path if Path(p or ".").resolve() != ROOT]
    hf = importlib.machinery.PathFinder.find_spec("kernels", rest)
    out = _run("import kernels; print(kernels.__file__)")
    if hf is None:  # HF's package is not installed: the bare name does not import
        assert out.returncode != 0 and "No module named 'kernels'" in out.stderr, out.stderr
    else:
        assert out.returncode == 0, out.stderr[-2000:]
        assert Path(out.stdout.strip()).resolve() == Path(hf.origin).resolve()
        assert str(ROOT / "kernels") not in out.stdout


@pytest.mark.parametrize(
    "code",
    [
        "import agentrt, transformers.activations, sys; print(sys.modules.get('kernels'))",
        # a user who imports transformers first, with no agentrt import at all
        "from transformers import LlamaForCausalLM; import sys; print(sys.modules.get('kernels'))",
    ],
    ids=["agentrt-first", "transformers-first"],
)
def test_python_from_the_repository_root_imports_transformers(code: str) -> None:
    out = _run(code)
    assert out.returncode == 0, out.stderr[-2000:]
    assert str(ROOT / "kernels") not in out.stdout


def test_importing_agentrt_installs_no_import_hook() -> None:
    """No meta path finder or other import-time hook comes with `import agentrt`."""
    out = _run(
        "import sys; before = list(sys.meta_path); import agentrt; print(sys.meta_path == before)"
    )
    assert out.returncode == 0 and out.stdout.strip() == "True", out.stderr[-2000:]
