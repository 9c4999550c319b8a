"""Crash-safe file writing (temp file in the same folder, fsync, rename, fsync the folder).

A reader never sees a half-written file under its final name: until `os.replace` the bytes
live in `.tmp-<name>-<random>` beside the target, and the rename is atomic on POSIX file
systems. A writer killed at any point leaves at most a `.tmp-` file behind (see
`stale_temp_files`). Files are created 0600 and folders this module creates 0700, since
checkpoints hold the user's conversations. safetensors files are streamed by our own
writer, not `safetensors.torch.save_file`, which stages through its own `.tmpXXXXXX` file
(a half file a crash would leave under a foreign name) and copies every tensor in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    import torch

TEMP_PREFIX = ".tmp-"
CHUNK_BYTES = 1 << 20  # 1 MiB reads when hashing
FILE_MODE = 0o600
DIR_MODE = 0o700
SAFETENSORS_DTYPES = {
    "bool": "BOOL",
    "uint8": "U8",
    "int8": "I8",
    "int16": "I16",
    "int32": "I32",
    "int64": "I64",
    "float16": "F16",
    "bfloat16": "BF16",
    "float32": "F32",
    "float64": "F64",
}


@dataclass(frozen=True)
class WrittenFile:
    """A file that `write_atomic` put in place: its final path, size and SHA-256."""

    path: Path
    size_bytes: int
    sha256: str


def ensure_private_dir(path: Path) -> Path:
    """Create `path` and missing parents with mode 0700 (existing folders are left as they are)."""
    path = Path(path)
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(folder, DIR_MODE)  # mkdir's mode is filtered by the umask
    return path


def sha256_of_fd(fd: int) -> tuple[int, str]:
    """(size, hex SHA-256) of an open file's content, read from offset 0 in 1 MiB chunks."""
    digest = hashlib.sha256()
    size = 0
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, CHUNK_BYTES):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def file_sha256(path: Path) -> tuple[int, str]:
    """(size, hex SHA-256) of a file, streamed in 1 MiB chunks."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return sha256_of_fd(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename in it) to disk."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path_for(path: Path) -> Path:
    """A fresh temp name beside `path`: `.tmp-<name>-<random hex>`."""
    return path.with_name(f"{TEMP_PREFIX}{path.name}-{secrets.token_hex(6)}")


class HashingWriter:
    """A binary sink that forwards writes to a file and hashes them on the way (SHA-256, size)."""

    def __init__(self, raw: BinaryIO) -> None:
        """Wrap an open binary file."""
        self.raw = raw
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        """Write and hash `data` (any C-contiguous buffer); returns its byte count."""
        view = memoryview(data).cast("B")
        self.raw.write(view)
        self.digest.update(view)
        self.size += view.nbytes
        return view.nbytes


def write_atomic(path: Path, write: Callable[[HashingWriter], None]) -> WrittenFile:
    """Call `write(sink)` on a fresh temp file, fsync it, rename it to `path`, fsync the folder.

    The SHA-256 and size are computed while writing. On any error the temp file is removed
    and `path` is untouched (its previous content, if any, stays valid). A process killed
    before the rename leaves only a `.tmp-` file.
    """
    path = Path(path)
    folder = ensure_private_dir(path.parent)
    tmp = temp_path_for(path)
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as raw:
            sink = HashingWriter(raw)
            write(sink)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(folder)
    return WrittenFile(path=path, size_bytes=sink.size, sha256=sink.digest.hexdigest())


def write_bytes_atomic(path: Path, data: bytes) -> WrittenFile:
    """Write `data` to `path` crash-safely (see `write_atomic`)."""

    return write_atomic(path, lambda sink: sink.write(data))


def write_safetensors_atomic(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]
) -> WrittenFile:
    """Stream tensors into a safetensors file crash-safely (no in-memory copy of the file)."""
    return write_atomic(path, safetensors_writer(tensors, metadata))


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """A small safetensors file's bytes, in memory (the same layout as the files written)."""
    import io

    raw = io.BytesIO()
    safetensors_writer(tensors, metadata)(HashingWriter(raw))
    return raw.getvalue()


def safetensors_writer(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str]
) -> Callable[[HashingWriter], None]:
    """A writer for `write_atomic` that streams tensors as a safetensors file.

    Layout per the safetensors spec: u64 LE header length, JSON header (`__metadata__` and
    dtype/shape/data_offsets per tensor, space-padded to 8 bytes), then the tensor bytes,
    largest element size first so every tensor is aligned to its element size.
    """
    import torch

    if "__metadata__" in tensors:
        raise ValueError("a tensor may not be named '__metadata__'")
    items = sorted(tensors.items(), key=lambda kv: (-kv[1].element_size(), kv[0]))
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    offset = 0
    for name, t in items:
        code = SAFETENSORS_DTYPES.get(str(t.dtype).removeprefix("torch."))
        if code is None:
            raise TypeError(f"tensor {name!r} has dtype {t.dtype}, which safetensors cannot store")
        nbytes = t.numel() * t.element_size()
        header[name] = {
            "dtype": code,
            "shape": list(t.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)

    def write(sink: HashingWriter) -> None:
        sink.write(struct.pack("<Q", len(raw)))
        sink.write(raw)
        for _, t in items:
            if t.numel():
                flat = t.detach().reshape(-1).contiguous().cpu()
                sink.write(flat.view(torch.uint8).numpy())

    return write


def safetensors_metadata(head: bytes, size: int) -> dict[str, str] | None:
    """The `__metadata__` of a safetensors stream from its first bytes (`size` in all), or None.

    For streams that are not files (an archive member); files go through `safe_open`.
    """
    if len(head) < 8:
        return None
    (length,) = struct.unpack("<Q", head[:8])
    if length > len(head) - 8 or 8 + length > size:
        return None
    try:
        meta = json.loads(head[8 : 8 + length]).get("__metadata__")
    except (ValueError, AttributeError):
        return None
    return meta if isinstance(meta, dict) else None


def stale_temp_files(folder: Path) -> Iterator[Path]:
    """Leftover `.tmp-*` files of interrupted writes in `folder` (for garbage collection)."""
    folder = Path(folder)
    if not folder.is_dir():
        return iter(())
    return (p for p in sorted(folder.iterdir()) if p.name.startswith(TEMP_PREFIX) and p.is_file())


__all__ = [
    "TEMP_PREFIX",
    "HashingWriter",
    "WrittenFile",
    "ensure_private_dir",
    "file_sha256",
    "fsync_dir",
    "safetensors_metadata",
    "safetensors_bytes",
    "safetensors_writer",
    "sha256_of_fd",
    "stale_temp_files",
    "temp_path_for",
    "write_atomic",
    "write_bytes_atomic",
    "write_safetensors_atomic",
]
