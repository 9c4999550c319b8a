"""Heavy or optional packages are imported where used, never by importing a package (DESIGN §1)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

CASES = [
    ("agentrt", {"torch", "textual", "sqlalchemy", "rich"}),
    ("agentrt.cli", {"torch", "transformers", "textual", "sqlalchemy", "rich", "ray"}),
    ("agentrt.dms", {"textual", "sqlalchemy", "rich"}),
    ("agentrt.kernels", {"textual", "sqlalchemy", "rich", "triton"}),
    ("agentrt.tools", {"textual", "sqlalchemy", "rich"}),
    ("agentrt.sessions", {"textual", "sqlalchemy", "torch"}),
    # the serving path a GPU box runs (its image has no sqlalchemy or textual)
    ("agentrt.engine", {"textual", "sqlalchemy", "alembic", "rich"}),
    ("agentrt.sessions.checkpoint", {"textual", "sqlalchemy", "alembic"}),
    ("agentrt.bench.gpu_check", {"textual", "sqlalchemy", "alembic"}),
    # the chat UI: textual only once the app is built; its backend never needs it
    ("agentrt.cli.chat", {"torch", "transformers", "textual", "sqlalchemy", "rich"}),
    ("agentrt.tui.backend", {"textual", "torch", "sqlalchemy"}),
    # scale-out: Ray only where actors start (agentrt.cluster.actor), never in the router's parts
    ("agentrt.cluster", {"ray", "textual", "fastapi"}),
    ("agentrt.server", {"ray"}),
]


def loaded_packages(module: str, cwd: Path) -> set[str]:
    """Top-level names in sys.modules after `import module` in a fresh interpreter."""
    code = f"import json, sys; import {module}; print(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return {name.split(".")[0] for name in json.loads(proc.stdout.splitlines()[-1])}


@pytest.mark.parametrize(("module", "forbidden"), CASES, ids=[case[0] for case in CASES])
def test_import_loads_no_heavy_packages(module: str, forbidden: set[str], tmp_path: Path) -> None:
    loaded = loaded_packages(module, tmp_path)
    assert module.split(".")[0] in loaded
    assert not forbidden & loaded, f"`import {module}` loaded {sorted(forbidden & loaded)}"


@pytest.mark.parametrize("command", ["serve", "run"])
def test_help_of_commands_with_ray_flags_loads_no_ray(command: str, tmp_path: Path) -> None:
    """`agentrt serve --help` and `agentrt run --help` (which lists --ray) never import Ray."""
    code = (
        "import json, sys\n"
        "from agentrt.cli import cli\n"
        f"try:\n    cli.main(['{command}', '--help'], standalone_mode=False)\n"
        "finally:\n    print(json.dumps(sorted(sys.modules)))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert command != "run" or "--ray" in proc.stdout
    loaded = {name.split(".")[0] for name in json.loads(proc.stdout.splitlines()[-1])}
    assert "ray" not in loaded
