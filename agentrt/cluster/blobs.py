"""Checkpoint blobs on a store every replica reaches, through fsspec (S3, GCS, file://...).

The catalog stores blob paths relative to the agentrt home (`checkpoints/<id>/<blob>`); the
store keeps the same relative paths under its URL, so a row means the same file on every
replica. Uploads go to `<path>.part` first and are renamed, downloads land in a temp file
that replaces the local one: a half-copied blob is never read (and its sha256 is checked
on load anyway).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from agentrt.errors import CheckpointError, ConfigError


class BlobMirror:
    """Pushes local checkpoint blobs to a shared fsspec store and pulls them back."""

    def __init__(self, url: str, home: Path) -> None:
        try:
            from fsspec.core import url_to_fs
        except ImportError as err:  # pragma: no cover - torch depends on fsspec
            raise ConfigError(
                "a checkpoint store URL needs the fsspec package", hint="pip install fsspec"
            ) from err
        try:
            self.fs, root = url_to_fs(url)
        except (ImportError, ValueError) as err:
            raise ConfigError(
                f"cannot open the checkpoint store {url!r}: {err}",
                hint="use file:///path or an object-store URL whose fsspec driver is installed "
                "(s3:// needs `pip install s3fs`)",
            ) from None
        self.root = root.rstrip("/")
        self.home = Path(home)

    def _remote(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def push(self, rel: str) -> None:
        """Upload the local blob `home/rel` to the store (atomic rename at the end)."""
        remote = self._remote(rel)
        self.fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)
        self.fs.put_file(str(self.home / rel), remote + ".part")
        self.fs.mv(remote + ".part", remote)

    def pull(self, rel: str) -> Path:
        """The local copy of blob `rel`, downloaded from the store when missing here."""
        local = self.home / rel
        if local.is_file():
            return local
        remote = self._remote(rel)
        if not self.fs.exists(remote):
            raise CheckpointError(
                f"checkpoint blob {rel} is neither on this replica nor in the shared store",
                hint="check that every replica uses the same --checkpoint-store URL",
            )
        local.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = local.with_name(local.name + ".part")
        self.fs.get_file(remote, str(tmp))
        os.replace(tmp, local)
        return local

    def exists(self, rel: str) -> bool:
        """Whether the store holds blob `rel`."""
        return bool(self.fs.exists(self._remote(rel)))

    def describe(self) -> dict[str, Any]:
        """Where the store is (protocol and root), for `info()`."""
        proto = self.fs.protocol
        return {"protocol": proto if isinstance(proto, str) else proto[0], "root": self.root}
