"""Print README.md's quick-start commands, one per line, exactly as a newcomer pastes them.

`.ci/run` runs what this prints, so a README whose commands fail cannot pass CI.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def quick_start_commands(text: str) -> list[str]:
    """The non-empty lines of the first ```bash block under '## Quick start'."""
    block = re.search(r"^## Quick start\n.*?^```bash\n(.*?)^```", text, re.S | re.M)
    if block is None:
        raise SystemExit("README.md needs a ```bash block under '## Quick start'")
    lines = [line.strip() for line in block.group(1).splitlines() if line.strip()]
    if len(lines) != 2:
        raise SystemExit(f"README.md's quick start must hold two commands, found {len(lines)}")
    return lines


if __name__ == "__main__":
    sys.stdout.write("\n".join(quick_start_commands(README.read_text(encoding="utf-8"))) + "\n")
