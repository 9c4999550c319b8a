"""The catalog's modules are imported on a thread while the weights load (Engine.from_pretrained)."""

from __future__ import annotations

import subprocess
import sys


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_prefetch_imports_the_catalog_once_per_process() -> None:
    code = (
        "import sys\n"
        "from agentrt.engine.persistence import prefetch_catalog\n"
        "print('sqlalchemy' in sys.modules)\n"
        "t = prefetch_catalog(); t.join(60)\n"
        "print(prefetch_catalog() is t, t.daemon, 'agentrt.sessions.store' in sys.modules)\n"
    )
    assert _run(code).splitlines() == ["False", "True True True"]


def test_a_failed_prefetch_leaves_the_error_to_the_first_real_use(tmp_path) -> None:
    """Without SQLAlchemy the thread ends quietly; opening the catalog raises as before."""
    code = (
        "import sys\n"
        "sys.modules['sqlalchemy'] = None  # as on a machine without it\n"
        "from agentrt.engine.persistence import prefetch_catalog\n"
        "prefetch_catalog().join(60)\n"
        "try:\n"
        "    import agentrt.sessions.store\n"
        "except ImportError as exc:\n"
        "    print('ImportError', exc.name)\n"
    )
    assert _run(code) == "ImportError sqlalchemy"
