"""Import hygiene of agentrt.sessions (STYLE §8): no UI or tensor stack, no env reads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import agentrt.sessions

FORBIDDEN = ("torch", "textual", "rich")


def test_import_loads_no_ui_or_torch() -> None:
    code = (
        "import sys, agentrt.sessions\n"
        f"print(','.join(m for m in {FORBIDDEN!r} if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"imported: {result.stdout.strip()}"


def test_sources_never_read_the_environment() -> None:
    root = Path(agentrt.sessions.__file__).parent
    offenders = [
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if "os.environ" in path.read_text() or "getenv" in path.read_text()
    ]
    assert offenders == []


def test_all_names_exist() -> None:
    missing = [name for name in agentrt.sessions.__all__ if not hasattr(agentrt.sessions, name)]
    assert missing == []
