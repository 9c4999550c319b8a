"""Checkpoint blobs: one safetensors file per saved session cache, verified on load.

Tensors (CPU; independent of the pool's block size and device): per layer l,
`layer.{l}.k`/`.v` [sum_h lens, head_dim] (model dtype) and `.pos`/`.expiry` [sum_h lens]
int32 — every stream's live slots, head-major, in slot order (so the window ring's
stream-relative slots stay valid) — and `.lens` [H_kv] int32; `ring_slot` [L, H_kv, w + 1]
int64, `ring_flag` [L, H_kv, w + 1] bool, `next_pos` [1] int64; `token_ids` [T] int64;
the caller's `extra.*` tensors (e.g. sampler RNG state). The decision owed to the last
token needs no tensor: the next chunk's first token recomputes it, as without a checkpoint.
Header (str → str): format and version, fingerprint digest and parts, dtype, window, shapes,
next_pos, created time, SHA-256 of the tensor contents, the caller's metadata.
"""

from __future__ import annotations

import json
import operator
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentrt.errors import BudgetError, CheckpointError
from agentrt.sessions.atomic import (
    TEMP_PREFIX,
    read_safetensors,
    sha256_of_fd,
    write_safetensors_atomic,
)
from agentrt.sessions.fingerprint import Fingerprint, tensors_sha256

if TYPE_CHECKING:
    import torch

    from agentrt.dms.kv_pool import KVPool
    from agentrt.dms.session_cache import SessionCache

_identity = operator.attrgetter("st_ino", "st_size", "st_mtime_ns")  # changes on replace/rewrite
FORMAT_NAME = "agentrt-kv-checkpoint"
FORMAT_VERSION = 1
EXTRA_PREFIX = "extra."
STATE_GLOBALS = ("ring_slot", "ring_flag", "next_pos")
LAYER_FIELDS = ("k", "v", "pos", "expiry", "lens")


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
    """A verified checkpoint: cache state for `restore_cache`, token ids, extras, metadata."""

    state: dict[str, torch.Tensor] = field(repr=False)
    token_ids: list[int] = field(repr=False)
    extra: dict[str, torch.Tensor] = field(repr=False)
    metadata: dict[str, str] = field(repr=False)  # the caller's metadata from save_checkpoint
    fingerprint_parts: dict[str, str]
    header: dict[str, str] = field(repr=False)  # every header key, format fields included
    format_version: int = FORMAT_VERSION

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


def cache_state(cache: SessionCache) -> dict[str, torch.Tensor]:
    """Pack the live slots of every stream into CPU tensors (see the module docstring)."""
    import torch

    pool = cache.pool
    bs = pool.block_size
    state: dict[str, torch.Tensor] = {}
    for layer in range(cache.num_layers):
        flat = _stream_slots(cache.blocks[layer], cache.lens[layer], bs).to(pool.kv.device)
        blocks, offsets = flat // bs, flat % bs
        state[f"layer.{layer}.k"] = pool.kv[blocks, 0, offsets].cpu()
        state[f"layer.{layer}.v"] = pool.kv[blocks, 1, offsets].cpu()
        state[f"layer.{layer}.pos"] = pool.slot_pos[blocks, offsets].cpu()
        state[f"layer.{layer}.expiry"] = pool.slot_expiry[blocks, offsets].cpu()
        state[f"layer.{layer}.lens"] = torch.tensor(cache.lens[layer], dtype=torch.int32)
    state["ring_slot"] = cache.ring_slot.detach().to("cpu", torch.int64).clone()
    state["ring_flag"] = cache.ring_flag.detach().to("cpu", torch.bool).clone()
    state["next_pos"] = torch.tensor([cache.next_pos], dtype=torch.int64)
    return state


def restore_cache(state: dict[str, torch.Tensor], pool: KVPool, *, window: int) -> SessionCache:
    """Rebuild a SessionCache in `pool` (any block size or device; same layout and dtype).

    Raises CheckpointError naming every mismatch (layers, KV heads, head_dim, dtype, window)
    and BudgetError when the pool lacks free blocks; in both cases the pool is unchanged.
    """
    import torch

    from agentrt.dms.session_cache import SessionCache
    from agentrt.kernels import write_kv_slots

    layers, heads, head_dim, lens = _validate_state(state)
    spec = pool.spec
    problems = [
        f"{name}: checkpoint {have}, pool {want}"
        for name, have, want in (
            ("num_layers", layers, spec.num_layers),
            ("num_kv_heads", heads, spec.num_kv_heads),
            ("head_dim", head_dim, spec.head_dim),
            ("dtype", _dtype_name(state["layer.0.k"].dtype), _dtype_name(spec.dtype)),
            ("window", int(state["ring_slot"].shape[2]) - 1, window),
        )
        if have != want
    ]
    if problems:
        raise CheckpointError(
            "checkpoint does not fit this KV pool: " + "; ".join(problems),
            hint="restore it with the model and DMS config it was saved with",
        )
    bs = pool.block_size
    need = sum(-(-n // bs) for row in lens for n in row)
    if need > pool.num_free:
        raise BudgetError(
            f"restoring this checkpoint needs {need} KV blocks "
            f"({need * pool.bytes_per_block} bytes) but only {pool.num_free} of "
            f"{pool.num_blocks} are free",
            hint="raise kv_budget, or close or swap out idle sessions",
        )
    cache = SessionCache(pool, layers, heads, window)
    device = pool.kv.device
    try:
        for layer in range(layers):
            for h in range(heads):
                cache.blocks[layer][h] = pool.allocate(-(-lens[layer][h] // bs))
            flat = _stream_slots(cache.blocks[layer], lens[layer], bs).to(device)
            if flat.numel():
                write_kv_slots(
                    pool.kv,
                    pool.slot_expiry,
                    flat,
                    state[f"layer.{layer}.k"].to(device),
                    state[f"layer.{layer}.v"].to(device),
                    state[f"layer.{layer}.expiry"].to(device, torch.int32),
                )
                pool.pos_flat[flat] = state[f"layer.{layer}.pos"].to(device, torch.int32)
            cache.lens[layer] = list(lens[layer])
    except BaseException:
        cache.free()
        raise
    cache.ring_slot = state["ring_slot"].to("cpu", torch.int64).clone()
    cache.ring_flag = state["ring_flag"].to("cpu", torch.bool).clone()
    cache.next_pos = int(state["next_pos"][0])
    return cache


# -- files -------------------------------------------------------------------------------


def save_checkpoint(
    path: Path,
    cache: SessionCache,
    *,
    token_ids: list[int],
    fingerprint: Fingerprint,
    extra: dict[str, torch.Tensor] | None = None,
    metadata: dict[str, str] | None = None,
) -> CheckpointFileInfo:
    """Write one checkpoint file crash-safely; the catalog row is the caller's business."""
    import torch

    path = Path(path)
    if path.name.startswith(TEMP_PREFIX):
        raise ValueError(f"checkpoint name {path.name!r} must not start with {TEMP_PREFIX!r}")
    user = dict(metadata or {})
    bad = [k for k, v in user.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise ValueError(f"checkpoint metadata must map str to str, bad keys: {bad}")
    tensors = cache_state(cache)
    tensors["token_ids"] = torch.tensor(list(token_ids), dtype=torch.int64)
    for name, tensor in (extra or {}).items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"extra tensor names must be non-empty strings, got {name!r}")
        tensors[EXTRA_PREFIX + name] = tensor.detach().to("cpu").contiguous().clone()
    spec = cache.pool.spec
    slots = cache.slots_held
    streams = cache.num_layers * cache.num_kv_heads
    ratio = cache.next_pos * streams / slots if slots else 1.0
    header = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "fingerprint": fingerprint.digest,
        "fingerprint_parts": fingerprint.to_json(),
        "dtype": _dtype_name(spec.dtype),
        "window": str(cache.window),
        "num_layers": str(cache.num_layers),
        "num_kv_heads": str(cache.num_kv_heads),
        "head_dim": str(spec.head_dim),
        "next_pos": str(cache.next_pos),
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
        tokens=cache.next_pos,
        slots=slots,
        compression_ratio=ratio,
        format_version=FORMAT_VERSION,
        fingerprint=fingerprint.digest,
    )


def load_checkpoint(
    path: Path,
    *,
    expected_sha256: str | None = None,
    expected_size: int | None = None,
    fingerprint: Fingerprint | None = None,
) -> LoadedCheckpoint:
    """Verify (size, sha256, format, fingerprint) and read a checkpoint; CheckpointError if not OK.

    Without `expected_sha256` (no catalog row, e.g. an imported file) the tensor contents are
    checked against the digest stored in the header instead.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise CheckpointError(
            f"checkpoint file {path} is missing",
            hint="restore an older checkpoint of this session, or run `agentrt sessions gc`",
        ) from None
    except OSError as err:
        raise CheckpointError(f"checkpoint file {path} cannot be read: {err.strerror}") from None
    try:
        before = os.fstat(fd)
        if expected_size is not None and before.st_size != expected_size:
            raise _corrupt(path, f"size {before.st_size} bytes, expected {expected_size}")
        if expected_sha256 is not None:
            _, digest = sha256_of_fd(fd)
            if digest != expected_sha256.lower():
                raise _corrupt(
                    path,
                    f"sha256 {digest[:16]}… does not match the recorded {expected_sha256[:16]}…",
                )
        try:
            header, tensors = read_safetensors(path)
        except Exception as err:  # safetensors raises its own and builtin errors
            raise _corrupt(path, f"not a readable safetensors file ({err})") from None
    finally:
        os.close(fd)
    if not path.exists() or _identity(os.stat(path)) != _identity(before):
        raise CheckpointError(f"checkpoint file {path} changed while it was read", hint="retry")
    version, parts = _check_header(path, header)
    if fingerprint is not None:
        _check_fingerprint(path, parts, fingerprint)
    if expected_sha256 is None and tensors_sha256(tensors) != header.get("content_sha256"):
        raise _corrupt(path, "sha256 of the tensor contents does not match its header")
    state = {k: v for k, v in tensors.items() if not k.startswith(EXTRA_PREFIX)}
    token_ids = state.pop("token_ids", None)
    if token_ids is None:
        raise _corrupt(path, "tensor 'token_ids' is missing")
    try:
        _validate_state(state)
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


# -- helpers -----------------------------------------------------------------------------


def _stream_slots(blocks: list[list[int]], lens: list[int], bs: int) -> torch.Tensor:
    """[sum lens] int64 flat pool slots of slots 0..len−1 of each head's stream, head-major."""
    import torch

    parts = []
    for head_blocks, n in zip(blocks, lens, strict=True):
        if n == 0:
            continue
        idx = torch.arange(n, dtype=torch.int64)
        table = torch.tensor(head_blocks, dtype=torch.int64)
        parts.append(table[idx // bs] * bs + idx % bs)
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)


def _validate_state(state: dict[str, torch.Tensor]) -> tuple[int, int, int, list[list[int]]]:
    """Check a cache state's structure; returns (layers, kv heads, head_dim, lens per stream)."""
    missing = [k for k in STATE_GLOBALS if k not in state]
    if missing:
        raise CheckpointError(f"cache state lacks tensors {missing}")
    ring = state["ring_slot"]
    if ring.dim() != 3 or tuple(state["ring_flag"].shape) != tuple(ring.shape):
        raise CheckpointError(f"cache state ring shapes {tuple(ring.shape)} are inconsistent")
    layers, heads, _ = ring.shape
    names = [f"layer.{layer}.{f}" for layer in range(layers) for f in LAYER_FIELDS]
    missing = [n for n in names if n not in state]
    if missing or layers == 0:
        raise CheckpointError(f"cache state lacks tensors {missing[:4]} (of {len(missing)})")
    lens, head_dim = [], int(state["layer.0.k"].shape[-1])
    for layer in range(layers):
        row = [int(n) for n in state[f"layer.{layer}.lens"].tolist()]
        total = sum(row)
        shapes = [tuple(state[f"layer.{layer}.{f}"].shape) for f in LAYER_FIELDS[:4]]
        want = [(total, head_dim), (total, head_dim), (total,), (total,)]
        if len(row) != heads or min(row, default=0) < 0 or shapes != want:
            raise CheckpointError(f"cache state of layer {layer} is inconsistent: lens {row}")
        top = state["ring_slot"][layer].max(dim=-1).values.tolist()
        if any(t >= n for t, n in zip(top, row, strict=True)):
            raise CheckpointError(f"window ring of layer {layer} points past the live slots")
        lens.append(row)
    return layers, heads, head_dim, lens


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


def _dtype_name(dtype: Any) -> str:
    """'float32' for torch.float32."""
    return str(dtype).removeprefix("torch.")


def _corrupt(path: Path, why: str) -> CheckpointError:
    """The error for a checkpoint whose bytes cannot be trusted."""
    return CheckpointError(
        f"checkpoint file {path} is corrupt: {why}",
        hint="restore an older checkpoint of this session; this file cannot be used",
    )


__all__ = [
    "FORMAT_VERSION",
    "CheckpointFileInfo",
    "LoadedCheckpoint",
    "cache_state",
    "load_checkpoint",
    "restore_cache",
    "save_checkpoint",
]
