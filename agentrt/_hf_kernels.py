"""Keep Hugging Face's `kernels` package importable when the source tree is on sys.path.

The repository keeps agentrt's Triton kernels in a top-level `kernels/` folder (installed
as `agentrt.kernels`). When the repository root is on sys.path — `python -m` run from it,
or pytest's rootdir insertion — a bare `import kernels` (transformers does one when HF's
`kernels` distribution is installed) would find that folder instead. This finder sends the
bare name to the rest of sys.path; with HF's package absent it steps aside.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _is_root(entry: str) -> bool:
    try:
        return Path(entry or os.getcwd()).resolve() == ROOT
    except OSError:
        return False


class HFKernelsFinder(importlib.abc.MetaPathFinder):
    """Resolves the top-level name `kernels` on sys.path without the repository root."""

    def find_spec(self, name: str, path: object = None, target: object = None):  # noqa: ANN201
        """HF's `kernels` spec when the repository root would shadow it, else None."""
        if name != "kernels" or not any(_is_root(p) for p in sys.path):
            return None
        rest = [p for p in sys.path if not _is_root(p)]
        return importlib.machinery.PathFinder.find_spec(name, rest)


def install() -> None:
    """Put the finder first on sys.meta_path (once), in a source checkout only."""
    if not (ROOT / "pyproject.toml").is_file() or not (ROOT / "kernels").is_dir():
        return  # installed from a wheel: no top-level `kernels/` folder to shadow anything
    if not any(isinstance(f, HFKernelsFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, HFKernelsFinder())
