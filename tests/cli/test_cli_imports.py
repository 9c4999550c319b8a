"""The CLI parses and prints: it reaches the rest of agentrt through public names only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CLI = Path(__file__).resolve().parents[2] / "agentrt" / "cli"


def _private_imports(path: Path) -> list[str]:
    """`module.name` of every private module or name a file imports from agentrt."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("agentrt"):
            if any(p.startswith("_") for p in node.module.split(".")):
                found.append(node.module)
            found += [
                f"{node.module}.{a.name}"
                for a in node.names
                if a.name.startswith("_") and not a.name.startswith("__")
            ]
        elif isinstance(node, ast.Import):
            found += [
                a.name
                for a in node.names
                if a.name.startswith("agentrt")
                and any(p.startswith("_") for p in a.name.split("."))
            ]
    return found


@pytest.mark.parametrize("path", sorted(CLI.glob("*.py")), ids=lambda p: p.name)
def test_cli_imports_no_private_names(path: Path) -> None:
    assert _private_imports(path) == [], f"{path.name} imports private names"


def test_the_check_sees_a_private_import(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from agentrt.kernels._validate import KEEP_FOREVER\nfrom agentrt.x import _y\n"
    )
    assert _private_imports(probe) == ["agentrt.kernels._validate", "agentrt.x._y"]
