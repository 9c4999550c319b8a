"""Reading a safetensors file in one pass: its bytes into one buffer, tensors as views of it.

`safetensors.safe_open` maps the file and copies every tensor out of the map, and hashing
the file first reads it once more; a checkpoint restore then pays three passes over its
bytes before the KV pool sees them. Here the file is read once into a buffer, hashed from
that buffer, and the tensors are zero-copy views into it (they keep the buffer alive).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header
_THREAD_MIN = 4 << 20  # below this a hashing thread costs more than it saves


def read_fd(fd: int, size: int) -> bytearray:
    """The first `size` bytes of an open file, read from offset 0 into one buffer.

    Raises OSError when the file holds fewer bytes (it shrank while being read).
    """
    buf = bytearray(size)
    view = memoryview(buf)
    done = 0
    while done < size:
        got = os.preadv(fd, [view[done:]], done)
        if got == 0:
            raise OSError(f"file ended after {done} of {size} bytes")
        done += got
    return buf


def sha256_hex(buf: bytes | bytearray | memoryview) -> str:
    """Hex SHA-256 of a buffer."""
    return hashlib.sha256(buf).hexdigest()


def sha256_started(buf: bytes | bytearray | memoryview) -> Callable[[], str]:
    """Start hashing `buf`; calling the result returns its hex SHA-256.

    A large buffer is hashed on a thread (hashlib releases the GIL), so a second pass over
    the same bytes, such as the content digest of `parse_with_digest`, runs beside it.
    """
    if len(buf) < _THREAD_MIN:
        digest = sha256_hex(buf)
        return lambda: digest
    out: list[str] = []
    thread = threading.Thread(target=lambda: out.append(sha256_hex(buf)), daemon=True)
    thread.start()

    def result() -> str:
        thread.join()
        return out[0]

    return result


def _dtypes() -> dict[str, torch.dtype]:
    import torch

    return {
        "BOOL": torch.bool,
        "U8": torch.uint8,
        "I8": torch.int8,
        "I16": torch.int16,
        "I32": torch.int32,
        "I64": torch.int64,
        "F16": torch.float16,
        "BF16": torch.bfloat16,
        "F32": torch.float32,
        "F64": torch.float64,
    }


def parse_safetensors(buf: bytearray) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(header metadata, tensors) of a safetensors file's bytes; tensors are views of `buf`.

    Raises ValueError naming what is malformed (header length, JSON, dtype, shape, offsets).
    """
    meta, tensors, _ = parse_with_digest(buf)
    return meta, tensors


def parse_with_digest(
    buf: bytearray,
) -> tuple[dict[str, str], dict[str, torch.Tensor], str]:
    """`parse_safetensors` plus the tensors' content digest, hashed from the buffer's slices
    (equal to `agentrt.sessions.fingerprint.tensors_sha256` of the tensors, without
    touching them one by one)."""
    import torch

    if len(buf) < 8:
        raise ValueError(f"{len(buf)} bytes is too short for a safetensors header")
    (length,) = struct.unpack_from("<Q", buf, 0)
    if length > min(len(buf) - 8, _MAX_HEADER):
        raise ValueError(f"header length {length} does not fit a {len(buf)}-byte file")
    try:
        header = json.loads(bytes(buf[8 : 8 + length]))
    except (UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"header is not JSON ({err})") from None
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise ValueError("__metadata__ is not an object")
    dtypes = _dtypes()
    start = 8 + length
    data_len = len(buf) - start
    tensors: dict[str, torch.Tensor] = {}
    spans: dict[str, tuple[int, int]] = {}
    for name, info in header.items():
        try:
            dtype = dtypes[info["dtype"]]
            shape = [int(n) for n in info["shape"]]
            begin, end = (int(n) for n in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"tensor {name!r} has a malformed entry") from None
        numel = 1
        for n in shape:
            if n < 0:
                raise ValueError(f"tensor {name!r} has a negative dimension")
            numel *= n
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        if not 0 <= begin <= end <= data_len or end - begin != nbytes:
            raise ValueError(f"tensor {name!r} has offsets {begin}..{end} that do not fit")
        if numel == 0:
            tensors[name] = _empty(dtype).reshape(shape)
        else:
            flat = torch.frombuffer(buf, dtype=dtype, count=numel, offset=start + begin)
            tensors[name] = flat.view(shape)
        spans[name] = (start + begin, start + end)
    view = memoryview(buf)
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        begin, end = spans[name]
        if end > begin:
            digest.update(view[begin:end])
    return {str(k): str(v) for k, v in meta.items()}, tensors, digest.hexdigest()


_EMPTY: dict[torch.dtype, torch.Tensor] = {}


def _empty(dtype: torch.dtype) -> torch.Tensor:
    """A shared zero-length tensor of `dtype` (reshaped views of it cost no allocation)."""
    import torch

    if dtype not in _EMPTY:
        _EMPTY[dtype] = torch.empty(0, dtype=dtype)
    return _EMPTY[dtype]


__all__ = ["parse_safetensors", "parse_with_digest", "read_fd", "sha256_hex", "sha256_started"]
