"""Checkpoint blobs: one safetensors file per saved session cache, verified on load.

Tensors: the cache state of `SessionCache.state_dict()` (see `agentrt.dms.cache_state`:
per-layer packed K/V, positions, expiries and lengths, the window ring, next_pos),
`token_ids` [T] int64 and the caller's `extra.*` tensors (e.g. sampler RNG state). The
cache is packed and unpacked by `SessionCache` only; this module writes and verifies files.
Header (str → str): format and version, fingerprint digest and parts, dtype, window, shapes,
next_pos, created time, SHA-256 of the tensor contents, the caller's metadata.

An incremental checkpoint (`save_delta`, format version 2, header `checkpoint_kind` =
`delta`) holds the tensors of `agentrt.sessions.delta` plus the extras, and names its parent
by SHA-256 (`parent_sha256`) and token count (`parent_tokens`); `agentrt.sessions.chain`
restores it on top of its parent. `load_checkpoint` reads full checkpoints only.
"""

from __future__ import annotations

import dataclasses
import json
import operator
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from agentrt.errors import CheckpointError
from agentrt.sessions.atomic import (
    TEMP_PREFIX,
    safetensors_bytes,
    write_safetensors_atomic,
)
from agentrt.sessions.fingerprint import Fingerprint, tensors_sha256
from agentrt.sessions.tensor_file import parse_with_digest, read_fd, sha256_hex, sha256_started

if TYPE_CHECKING:
    import torch

    from agentrt.dms.session_cache import SessionCache

_identity = operator.attrgetter("st_ino", "st_size", "st_mtime_ns")  # changes on replace/rewrite
FORMAT_NAME = "agentrt-kv-checkpoint"
FORMAT_VERSION = 2  # the newest format this agentrt reads
FULL_VERSION = 1  # full checkpoints (unchanged since version 1)
DELTA_VERSION = 2  # incremental checkpoints
KIND_KEY = "checkpoint_kind"
EXTRA_PREFIX = "extra."


class CheckpointFileMissing(CheckpointError):
    """The checkpoint's file is gone: its catalog row can be marked missing."""


class CheckpointCorrupt(CheckpointError):
    """The checkpoint's bytes cannot be trusted: its catalog row can be marked missing."""


@dataclass(frozen=True)
class CheckpointFileInfo:
    """What `save_checkpoint` wrote: the facts a catalog row records."""

    path: Path
    size_bytes: int
    sha256: str
    tokens: int  # tokens seen by the cache (next_pos)
    slots: int  # live slots over all streams
    compression_ratio: float  # tokens · streams / slots, window included
    format_version: int
    fingerprint: str  # digest of the model fingerprint


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A verified checkpoint: cache state for `SessionCache.from_state`, token ids, extras, metadata."""

    state: dict[str, torch.Tensor] = field(repr=False)
    token_ids: list[int] = field(repr=False)
    extra: dict[str, torch.Tensor] = field(repr=False)
    metadata: dict[str, str] = field(repr=False)  # the caller's metadata from save_checkpoint
    fingerprint_parts: dict[str, str]
    header: dict[str, str] = field(repr=False)  # every header key, format fields included
    format_version: int = FULL_VERSION

    @property
    def next_pos(self) -> int:
        """Tokens the saved cache had seen."""
        return int(self.state["next_pos"][0])

    @property
    def window(self) -> int:
        """DMS window w the saved cache was built with."""
        return int(self.state["ring_slot"].shape[2]) - 1

    def __repr__(self) -> str:
        """Redacted summary: counts only, never token ids or metadata values."""
        return (
            f"LoadedCheckpoint(format_version={self.format_version}, next_pos={self.next_pos}, "
            f"tokens={len(self.token_ids)}, extra={sorted(self.extra)})"
        )


# -- files -------------------------------------------------------------------------------


def save_checkpoint(
    path: Path,
    cache: SessionCache | dict[str, torch.Tensor],
    *,
    token_ids: list[int],
    fingerprint: Fingerprint,
    extra: dict[str, torch.Tensor] | None = None,
    metadata: dict[str, str] | None = None,
) -> CheckpointFileInfo:
    """Write one checkpoint file crash-safely; the catalog row is the caller's business.

    `cache` is a SessionCache or a state it packed before (`state_dict()`, e.g. a snapshot
    taken under the engine lock, so that the write itself runs outside it).
    """
    import torch

    path = Path(path)
    if path.name.startswith(TEMP_PREFIX):
        raise ValueError(f"checkpoint name {path.name!r} must not start with {TEMP_PREFIX!r}")
    user = dict(metadata or {})
    bad = [k for k, v in user.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise ValueError(f"checkpoint metadata must map str to str, bad keys: {bad}")
    from agentrt.dms.cache_math import compression_ratio
    from agentrt.dms.cache_state import dtype_name, validate_state

    tensors = dict(cache) if isinstance(cache, dict) else cache.state_dict()
    layers, heads, head_dim, lens = validate_state(tensors)
    next_pos = int(tensors["next_pos"][0])
    window = int(tensors["ring_slot"].shape[2]) - 1
    tensors["token_ids"] = torch.tensor(list(token_ids), dtype=torch.int64)
    for name, tensor in (extra or {}).items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"extra tensor names must be non-empty strings, got {name!r}")
        tensors[EXTRA_PREFIX + name] = tensor.detach().to("cpu").contiguous().clone()
    slots = sum(map(sum, lens))
    header = {
        "format": FORMAT_NAME,
        "format_version": str(FULL_VERSION),
        "fingerprint": fingerprint.digest,
        "fingerprint_parts": fingerprint.to_json(),
        "dtype": dtype_name(tensors["layer.0.k"].dtype),
        "window": str(window),
        "num_layers": str(layers),
        "num_kv_heads": str(heads),
        "head_dim": str(head_dim),
        "next_pos": str(next_pos),
        "tokens": str(len(token_ids)),
        "slots": str(slots),
        "created": datetime.now(UTC).isoformat(),
        "content_sha256": tensors_sha256(tensors),
        "user_metadata": json.dumps(user, sort_keys=True),
    }
    written = write_safetensors_atomic(path, tensors, header)
    return CheckpointFileInfo(
        path=written.path,
        size_bytes=written.size_bytes,
        sha256=written.sha256,
        tokens=next_pos,
        slots=slots,
        compression_ratio=compression_ratio(next_pos, lens),
        format_version=FULL_VERSION,
        fingerprint=fingerprint.digest,
    )


def save_delta(
    path: Path,
    delta: dict[str, torch.Tensor],
    *,
    parent_sha256: str,
    parent_tokens: int,
    fingerprint: Fingerprint,
    extra: dict[str, torch.Tensor] | None = None,
    extra_names: list[str] | None = None,
    metadata: dict[str, str] | None = None,
) -> CheckpointFileInfo:
    """Write one incremental checkpoint (`DeltaBase.delta` tensors) crash-safely.

    The header binds it to its parent: the parent file's SHA-256 and its token count.
    `extra` holds the extra tensors that changed, `extra_names` names all of them (default:
    those in `extra`); the others are inherited from the parent.
    """
    path = Path(path)
    if path.name.startswith(TEMP_PREFIX):
        raise ValueError(f"checkpoint name {path.name!r} must not start with {TEMP_PREFIX!r}")
    tensors, header, info = _delta_file(
        delta,
        parent_sha256=parent_sha256,
        parent_tokens=parent_tokens,
        fingerprint=fingerprint,
        extra=extra,
        extra_names=extra_names,
        metadata=metadata,
    )
    written = write_safetensors_atomic(path, tensors, header)
    return dataclasses.replace(
        info, path=written.path, size_bytes=written.size_bytes, sha256=written.sha256
    )


def fork_delta(
    link: Path, *, sha256: str, size: int, metadata: dict[str, str] | None = None
) -> tuple[bytes, CheckpointFileInfo]:
    """(file bytes, info without path) of an empty delta on checkpoint file `link` (a full
    or incremental one, verified here): a fork's first checkpoint, which adds nothing."""
    import torch

    _, parts, header, tensors = read_verified(link, expected_sha256=sha256, expected_size=size)
    layers = int(tensors["ring_slot"].shape[0])
    k = tensors["layer.0.k"]
    delta: dict[str, torch.Tensor] = {}
    for layer in range(layers):
        delta[f"layer.{layer}.lens"] = tensors[f"layer.{layer}.lens"].clone()
        delta[f"layer.{layer}.k"] = k.new_empty((0, k.shape[-1]))
        delta[f"layer.{layer}.v"] = k.new_empty((0, k.shape[-1]))
        for name in ("pos", "expiry", "flag_expiry"):
            delta[f"layer.{layer}.{name}"] = torch.zeros(0, dtype=torch.int32)
        for name in ("rows", "flag_rows"):
            delta[f"layer.{layer}.{name}"] = torch.zeros(0, dtype=torch.int64)
    for name in ("ring_slot", "ring_flag", "next_pos"):
        delta[name] = tensors[name].clone()
    delta["token_ids"] = torch.zeros(0, dtype=torch.int64)
    if header.get(KIND_KEY) == "delta":
        names = [str(n) for n in json.loads(header.get("extra_names", "[]"))]
    else:
        names = [n[len(EXTRA_PREFIX) :] for n in tensors if n.startswith(EXTRA_PREFIX)]
    tensors, head, info = _delta_file(
        delta,
        parent_sha256=sha256,
        parent_tokens=int(header["tokens"]),
        fingerprint=Fingerprint(parts),
        extra_names=names,
        metadata=metadata,
    )
    data = safetensors_bytes(tensors, head)
    digest = sha256_hex(data)
    return data, dataclasses.replace(info, size_bytes=len(data), sha256=digest)


def _delta_file(
    delta: dict[str, torch.Tensor],
    *,
    parent_sha256: str,
    parent_tokens: int,
    fingerprint: Fingerprint,
    extra: dict[str, torch.Tensor] | None = None,
    extra_names: list[str] | None = None,
    metadata: dict[str, str] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, str], CheckpointFileInfo]:
    """(tensors, header, info without path/size/sha) of an incremental checkpoint file."""
    from agentrt.dms.cache_math import compression_ratio
    from agentrt.dms.cache_state import dtype_name

    tensors = dict(delta)
    for name, tensor in (extra or {}).items():
        tensors[EXTRA_PREFIX + name] = tensor.detach().to("cpu").contiguous().clone()
    layers = int(tensors["ring_slot"].shape[0])
    lens = [[int(n) for n in tensors[f"layer.{i}.lens"].tolist()] for i in range(layers)]
    next_pos = int(tensors["next_pos"][0])
    tokens = parent_tokens + int(tensors["token_ids"].numel())
    slots = sum(map(sum, lens))
    header = {
        "format": FORMAT_NAME,
        "format_version": str(DELTA_VERSION),
        KIND_KEY: "delta",
        "parent_sha256": parent_sha256,
        "parent_tokens": str(parent_tokens),
        "extra_names": json.dumps(sorted(extra_names if extra_names is not None else extra or {})),
        "fingerprint": fingerprint.digest,
        "fingerprint_parts": fingerprint.to_json(),
        "dtype": dtype_name(tensors["layer.0.k"].dtype),
        "window": str(int(tensors["ring_slot"].shape[2]) - 1),
        "num_layers": str(layers),
        "num_kv_heads": str(len(lens[0])),
        "head_dim": str(int(tensors["layer.0.k"].shape[-1])),
        "next_pos": str(next_pos),
        "tokens": str(tokens),
        "slots": str(slots),
        "created": datetime.now(UTC).isoformat(),
        "content_sha256": tensors_sha256(tensors),
        "user_metadata": json.dumps(dict(metadata or {}), sort_keys=True),
    }
    info = CheckpointFileInfo(
        path=Path(),
        size_bytes=0,
        sha256="",
        tokens=next_pos,
        slots=slots,
        compression_ratio=compression_ratio(next_pos, lens),
        format_version=DELTA_VERSION,
        fingerprint=fingerprint.digest,
    )
    return tensors, header, info


@dataclass(frozen=True)
class LoadedDelta:
    """A verified incremental checkpoint: its delta tensors, appended tokens, extras, header."""

    delta: dict[str, torch.Tensor] = field(repr=False)
    new_tokens: list[int] = field(repr=False)
    extra: dict[str, torch.Tensor] = field(repr=False)
    metadata: dict[str, str] = field(repr=False)
    fingerprint_parts: dict[str, str]
    header: dict[str, str] = field(repr=False)

    @property
    def parent_sha256(self) -> str:
        """SHA-256 of the parent checkpoint's file, as recorded when this delta was written."""
        return self.header.get("parent_sha256", "")

    @property
    def parent_tokens(self) -> int:
        """Token ids the parent checkpoint held."""
        return int(self.header.get("parent_tokens", "-1"))

    @property
    def extra_names(self) -> list[str]:
        """Every extra tensor of the restore point (those not in `extra` come from the parent)."""
        return [str(n) for n in json.loads(self.header.get("extra_names", "[]"))]


def load_checkpoint(
    path: Path,
    *,
    expected_sha256: str | None = None,
    expected_size: int | None = None,
    fingerprint: Fingerprint | None = None,
) -> LoadedCheckpoint:
    """Verify (size, sha256, format, fingerprint) and read a checkpoint; CheckpointError if not OK.

    The tensor contents are always checked against the digest in the header as well, so a
    file whose row was recorded from damaged bytes is refused too. An incremental checkpoint
    is refused: restore it with its chain (`agentrt.sessions.chain.load_chain`).
    """
    from agentrt.dms.cache_state import validate_state

    path = Path(path)
    version, parts, header, tensors = read_verified(
        path, expected_sha256=expected_sha256, expected_size=expected_size, fingerprint=fingerprint
    )
    if header.get(KIND_KEY) == "delta":
        raise CheckpointError(
            f"checkpoint file {path} is incremental (a delta on checkpoint "
            f"{header.get('parent_sha256', '?')[:16]}…): it restores only on top of its chain",
            hint="open the session (`agentrt resume NAME`), which restores the whole chain",
        )
    state = {k: v for k, v in tensors.items() if not k.startswith(EXTRA_PREFIX)}
    token_ids = state.pop("token_ids", None)
    if token_ids is None:
        raise _corrupt(path, "tensor 'token_ids' is missing")
    try:
        validate_state(state)
        user = json.loads(header.get("user_metadata", "{}"))
    except (CheckpointError, ValueError) as err:
        raise _corrupt(path, str(err)) from None
    extra = {k[len(EXTRA_PREFIX) :]: v for k, v in tensors.items() if k.startswith(EXTRA_PREFIX)}
    return LoadedCheckpoint(
        state=state,
        token_ids=[int(t) for t in token_ids.tolist()],
        extra=extra,
        metadata={str(k): str(v) for k, v in user.items()},
        fingerprint_parts=parts,
        header=header,
        format_version=version,
    )


def load_delta(
    path: Path,
    *,
    expected_sha256: str | None = None,
    expected_size: int | None = None,
    fingerprint: Fingerprint | None = None,
) -> LoadedDelta:
    """Verify and read an incremental checkpoint (same checks as `load_checkpoint`)."""
    path = Path(path)
    _, parts, header, tensors = read_verified(
        path, expected_sha256=expected_sha256, expected_size=expected_size, fingerprint=fingerprint
    )
    if header.get(KIND_KEY) != "delta":
        raise _corrupt(path, "it is recorded as incremental but holds a full checkpoint")
    try:
        user = json.loads(header.get("user_metadata", "{}"))
        int(header["parent_tokens"])
        if not isinstance(json.loads(header.get("extra_names", "[]")), list):
            raise ValueError("extra_names is not a list")
    except (KeyError, ValueError) as err:
        raise _corrupt(path, f"its delta header is incomplete ({err})") from None
    new_tokens = tensors.pop("token_ids", None)
    if new_tokens is None:
        raise _corrupt(path, "tensor 'token_ids' is missing")
    delta = {k: v for k, v in tensors.items() if not k.startswith(EXTRA_PREFIX)}
    extra = {k[len(EXTRA_PREFIX) :]: v for k, v in tensors.items() if k.startswith(EXTRA_PREFIX)}
    return LoadedDelta(
        delta=delta,
        new_tokens=[int(t) for t in new_tokens.tolist()],
        extra=extra,
        metadata={str(k): str(v) for k, v in user.items()},
        fingerprint_parts=parts,
        header=header,
    )


def read_verified(
    path: Path,
    *,
    expected_sha256: str | None = None,
    expected_size: int | None = None,
    fingerprint: Fingerprint | None = None,
) -> tuple[int, dict[str, str], dict[str, str], dict[str, torch.Tensor]]:
    """(format version, fingerprint parts, header, tensors) of a checkpoint file whose size,
    SHA-256, format, fingerprint and content digest all check out; CheckpointError if not."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise CheckpointFileMissing(
            f"checkpoint file {path} is missing",
            hint="restore an older checkpoint of this session, or run `agentrt sessions gc`",
        ) from None
    except OSError as err:
        raise CheckpointError(f"checkpoint file {path} cannot be read: {err.strerror}") from None
    try:
        before = os.fstat(fd)
        if expected_size is not None and before.st_size != expected_size:
            raise _corrupt(path, f"size {before.st_size} bytes, expected {expected_size}")
        try:
            buf = read_fd(fd, before.st_size)
        except OSError as err:
            raise CheckpointError(
                f"checkpoint file {path} cannot be read: {err}", hint="retry"
            ) from None
        # the file's digest (on a thread) and the tensors' content digest are two passes
        # over the same bytes; they run side by side, and a wrong file digest is reported first
        file_digest = sha256_started(buf) if expected_sha256 is not None else None
        try:
            header, tensors, content = parse_with_digest(buf)
            unreadable = None
        except ValueError as err:
            unreadable = err
        if file_digest is not None:
            digest = file_digest()
            if digest != expected_sha256.lower():
                raise _corrupt(
                    path,
                    f"sha256 {digest[:16]}… does not match the recorded {expected_sha256[:16]}…",
                )
        if unreadable is not None:
            raise _corrupt(path, f"not a readable safetensors file ({unreadable})") from None
    finally:
        os.close(fd)
    if not path.exists() or _identity(os.stat(path)) != _identity(before):
        raise CheckpointError(f"checkpoint file {path} changed while it was read", hint="retry")
    version, parts = _check_header(path, header)
    if fingerprint is not None:
        _check_fingerprint(path, parts, fingerprint)
    if content != header.get("content_sha256"):
        raise _corrupt(path, "sha256 of the tensor contents does not match its header")
    return version, parts, header, tensors


def read_header(path: Path) -> dict[str, str]:
    """A checkpoint's header (str → str) without reading its tensors; CheckpointError if unreadable."""
    from safetensors import safe_open

    if not Path(path).is_file():
        raise CheckpointFileMissing(f"checkpoint file {path} is missing")
    try:
        with safe_open(str(path), framework="numpy") as f:
            return dict(f.metadata() or {})
    except Exception as err:  # safetensors raises its own and builtin errors
        raise CheckpointError(f"checkpoint file {path} is unreadable: {err}") from None


def layer_compression(path: Path) -> list[dict[str, float | int]]:
    """Per-layer slots and compression (tokens · H_kv / slots) read from a checkpoint file.

    Reads only the header and the small `layer.{l}.lens` [H_kv] tensors (no model, no torch).
    Raises CheckpointError when the file is missing or unreadable.
    """
    from safetensors import safe_open

    if not Path(path).is_file():
        raise CheckpointFileMissing(f"checkpoint file {path} is missing")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            tokens = int(meta.get("next_pos") or meta["tokens"])
            lens = [f.get_tensor(f"layer.{i}.lens") for i in range(int(meta["num_layers"]))]
    except Exception as err:  # safetensors raises its own and builtin errors
        raise CheckpointError(f"checkpoint file {path} is unreadable: {err}") from None
    from agentrt.dms.cache_math import compression_ratio

    rows = [[int(n) for n in row] for row in lens]
    return [
        {"layer": i, "slots": sum(row), "compression_ratio": compression_ratio(tokens, [row])}
        for i, row in enumerate(rows)
    ]


# -- helpers -----------------------------------------------------------------------------


def _check_header(path: Path, header: dict[str, str]) -> tuple[int, dict[str, str]]:
    """(format version, fingerprint parts), after checking the file is ours and not too new."""
    if header.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path} is not an agentrt checkpoint (no {FORMAT_NAME!r} header)")
    try:
        version = int(header["format_version"])
        parts = Fingerprint.from_json(header["fingerprint_parts"]).parts
    except (KeyError, ValueError, TypeError):
        raise _corrupt(path, "its header lacks a valid format_version or fingerprint") from None
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {version}; this agentrt reads up to "
            f"{FORMAT_VERSION}",
            hint="upgrade agentrt to open it",
        )
    return version, parts


def _check_fingerprint(path: Path, parts: dict[str, str], model: Fingerprint) -> None:
    """Refuse a checkpoint saved with another model, naming each part that differs."""
    details = Fingerprint(parts=parts).describe_diff(model, ("checkpoint", "model"))
    if details:
        raise CheckpointError(
            f"checkpoint {path.name} was saved with a different model: {details}",
            hint="open the session with the model, tokenizer, DMS config and dtype it was saved with",
        )


def _corrupt(path: Path, why: str) -> CheckpointCorrupt:
    """The error for a checkpoint whose bytes cannot be trusted."""
    return CheckpointCorrupt(
        f"checkpoint file {path} is corrupt: {why}",
        hint="restore an older checkpoint of this session; this file cannot be used",
    )


__all__ = [
    "DELTA_VERSION",
    "FORMAT_VERSION",
    "FULL_VERSION",
    "LoadedDelta",
    "load_delta",
    "read_verified",
    "save_delta",
    "CheckpointCorrupt",
    "CheckpointFileMissing",
    "CheckpointFileInfo",
    "LoadedCheckpoint",
    "layer_compression",
    "fork_delta",
    "load_checkpoint",
    "read_header",
    "save_checkpoint",
]
