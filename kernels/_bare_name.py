"""Hand the bare name `kernels` over to Hugging Face's package when this folder shadows it.

The repository keeps agentrt's kernels in a top-level `kernels/` folder (installed as
`agentrt.kernels`). With the repository root on sys.path (Python started there, pytest's
rootdir), a bare `import kernels` — transformers does one when HF's `kernels` distribution
is installed — would find this folder. Its `__init__` then calls `hand_over`, which loads
HF's package from the rest of sys.path under the name `kernels`, or raises
ModuleNotFoundError when HF's package is not installed. Nothing is hooked into the import
system: this runs only when the folder is imported under the wrong name.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path


def _is_root(entry: str, root: Path) -> bool:
    try:
        return Path(entry or os.getcwd()).resolve() == root
    except OSError:
        return False


def hand_over(init_file: str) -> None:
    """Make `sys.modules["kernels"]` HF's package (the import returns it), or raise."""
    sys.modules.pop(__name__, None)  # this helper itself: HF's package has no such module
    root = Path(init_file).resolve().parent.parent
    rest = [p for p in sys.path if not _is_root(p, root)]
    spec = importlib.machinery.PathFinder.find_spec("kernels", rest)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError("No module named 'kernels'", name="kernels")
    module = importlib.util.module_from_spec(spec)
    sys.modules["kernels"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop("kernels", None)
        raise
