"""Run import-linter (`lint-imports`) on the `agentrt` namespace as installed.

pyproject maps `agentrt.dms` → `dms/`, `agentrt.kernels` → `kernels/` and so on; import-linter
finds a package's modules by walking its folder, so it would not see the mapped ones. This
script builds the installed layout from symlinks in a temporary folder (agentrt/'s entries
plus one link per mapped package), puts it first on PYTHONPATH and runs the contracts of
`[tool.importlinter]` in pyproject.toml. Exit status: lint-imports'.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    """Build the namespace tree, run lint-imports on it, return its exit status."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    mapping = config["tool"]["setuptools"]["package-dir"]
    with tempfile.TemporaryDirectory(prefix="agentrt-imports-") as tmp:
        ns = Path(tmp) / "agentrt"
        ns.mkdir()
        for entry in (ROOT / "agentrt").iterdir():
            if entry.name != "__pycache__":
                (ns / entry.name).symlink_to(entry)
        for name, folder in mapping.items():
            parts = name.split(".")
            if len(parts) == 2:  # agentrt.X → folder; deeper ones live inside it
                (ns / parts[1]).symlink_to(ROOT / folder)
        env = {**os.environ, "PYTHONPATH": tmp}
        cmd = ["lint-imports", str(ROOT / "pyproject.toml"), "--no-cache"]
        return subprocess.call(cmd, env=env, cwd=tmp)


if __name__ == "__main__":
    sys.exit(main())
