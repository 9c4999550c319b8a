"""Where a session's files live under the agentrt home: the one definition of the layout.

`<checkpoints>/<session-id>/<ms-time>-<tokens>.safetensors` blobs and a `.lock` file per
session; catalog rows store blob paths relative to the home folder. The folders come from
`agentrt.settings.Settings` (`home`, `checkpoint_dir`); nothing is created here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

LOCK_NAME = ".lock"
BLOB_SUFFIX = ".safetensors"


@dataclass(frozen=True)
class SessionLayout:
    """Paths of the checkpoint store below `home`."""

    home: Path
    checkpoint_dir: Path

    @classmethod
    def under(cls, home: Path) -> SessionLayout:
        """The default layout: `<home>/checkpoints`."""
        return cls(home=Path(home), checkpoint_dir=Path(home) / "checkpoints")

    def session_dir(self, session_id: str) -> Path:
        """Folder of one session's blobs and its lock file."""
        return self.checkpoint_dir / session_id

    def lock_path(self, session_id: str) -> Path:
        """The lock file an engine holds while the session is open."""
        return self.session_dir(session_id) / LOCK_NAME

    def new_blob(self, session_id: str, tokens: int) -> Path:
        """A fresh blob path, ordered by time: `<ms>-<tokens>.safetensors`."""
        return (
            self.session_dir(session_id) / f"{int(time.time() * 1000):013d}-{tokens}{BLOB_SUFFIX}"
        )

    def relative(self, path: Path) -> str:
        """A blob path as the catalog stores it (relative to home, POSIX)."""
        return Path(path).relative_to(self.home).as_posix()

    def resolve(self, file: str) -> Path:
        """A catalog blob path as a file on this machine."""
        return self.home / file
