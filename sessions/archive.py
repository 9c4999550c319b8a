"""Copying sessions within the catalog (fork) and through archives (export, import).

`fork` and `import` share `create_copy`: a new session row, blobs written crash-safely
(`write_atomic`: temp file, fsync, rename, fsync folder) and checked against their recorded
SHA-256, then the message and checkpoint rows. A checkpoint row never points at a file that
is not fully written; a failure deletes what was created.

An archive is a tar.gz with `manifest.json` (format, session row, messages, checkpoints with
size and SHA-256) and one `blobs/<n>.safetensors` member per checkpoint. An import verifies
every blob's size, SHA-256 and checkpoint header before it writes anything.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import math
import os
import re
import tarfile
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any

from agentrt.errors import AgentRTError, CheckpointError, SessionError
from agentrt.sessions.layout import SessionLayout
from agentrt.sessions.locks import remove_session_dir, session_lock

if TYPE_CHECKING:
    from agentrt.sessions.atomic import HashingWriter
    from agentrt.sessions.records import CheckpointInfo, SessionInfo
    from agentrt.sessions.store import SessionStore

ARCHIVE_FORMAT = "agentrt-session-archive"
ARCHIVE_VERSION = 1
MANIFEST = "manifest.json"
FORK_LINK = "fork_link"  # a copied row whose parent is the forked session's checkpoint
CHUNK = 1 << 20
_SAFE_BLOB = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\.safetensors$")


def iso(value: datetime) -> str:
    """An aware datetime as ISO 8601 in UTC."""
    return value.astimezone(UTC).isoformat()


# -- copying sessions (fork, import) ------------------------------------------------------


@dataclass(frozen=True)
class BlobCopy:
    """One checkpoint to recreate: its row (`as_json` of a CheckpointInfo) and a writer of its bytes."""

    row: Mapping[str, Any]
    filename: str
    write: Callable[[HashingWriter], None] = field(repr=False)


@dataclass(frozen=True)
class SessionCopy:
    """A session to create: its new name, row (`as_json` of a SessionInfo), messages, checkpoints."""

    name: str
    row: Mapping[str, Any]
    status: str
    messages: list[dict[str, Any]] = field(repr=False)
    checkpoints: list[BlobCopy]


def copy_file(path: Path) -> Callable[[HashingWriter], None]:
    """A writer for `write_atomic` that streams the bytes of `path`."""

    def write(sink: HashingWriter) -> None:
        if not path.is_file():
            raise CheckpointError(
                f"checkpoint file {path} is missing",
                hint="run `agentrt sessions gc` to mark it, then use another checkpoint",
            )
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                sink.write(chunk)

    return write


def create_copy(store: SessionStore, layout: SessionLayout, copy: SessionCopy) -> SessionInfo:
    """Create the session of `copy`: row, blobs (verified), messages, checkpoint rows.

    On any failure everything created so far is removed again and the error re-raised.
    A crash in between leaves at worst a session row without checkpoints, and stray
    blobs that `agentrt sessions gc` removes; never a row that points at a partial file.
    """
    from agentrt.sessions.atomic import write_atomic

    r = copy.row
    info = store.create_session(
        copy.name,
        str(r["model"]),
        str(r["fingerprint"]),
        dict(r.get("dms_config") or {}),
        tags=[str(t) for t in r.get("tags") or ()],
        pinned=bool(r.get("pinned", False)),
    )
    written: list[Path] = []
    try:
        with session_lock(layout, info.id, copy.name):
            for n, blob in enumerate(copy.checkpoints):
                path = layout.session_dir(info.id) / unique_name(blob.filename, n, written)
                written.append(path)
                done = write_atomic(path, blob.write)
                want = (int(blob.row["size_bytes"]), str(blob.row["sha256"]))
                if (done.size_bytes, done.sha256) != want:
                    raise CheckpointError(
                        f"checkpoint {blob.row['id']} is corrupt: {done.size_bytes} bytes with "
                        f"sha256 {done.sha256[:16]}…, recorded {want[0]} bytes, {want[1][:16]}…",
                        hint="run `agentrt sessions gc --verify` to mark corrupt checkpoints",
                    )
            for m in copy.messages:
                store.add_message(
                    info.id,
                    m["role"],
                    m["content"],
                    tool_calls=m.get("tool_calls"),
                    token_start=m.get("token_start"),
                    token_end=m.get("token_end"),
                )
            ids: dict[str, str] = {}
            for blob, path in zip(copy.checkpoints, written, strict=True):
                c = blob.row
                ids[c["id"]] = store.add_checkpoint(
                    info.id,
                    file=layout.relative(path),
                    size_bytes=int(c["size_bytes"]),
                    sha256=str(c["sha256"]),
                    tokens=int(c["tokens"]),
                    slots=int(c["slots"]),
                    compression_ratio=float(c["compression_ratio"]),
                    fingerprint=str(c["fingerprint"]),
                    format_version=int(c["format_version"]),
                    # a fork's link names its parent's checkpoint in the other session
                    parent_id=ids.get(c.get("parent_id") or "")
                    or (c["parent_id"] if c.get(FORK_LINK) else None),
                    kind=str(c["kind"]),
                ).id
                if c.get("label"):
                    store.label_checkpoint(ids[c["id"]], str(c["label"]))
            store.update_session_stats(
                info.id,
                tokens=int(r["tokens"]),
                slots=int(r["slots"]),
                kv_bytes=int(r["kv_bytes"]),
                compression_ratio=float(r["compression_ratio"]),
            )
            return store.set_status(info.id, copy.status)
    except BaseException:
        try:
            store.delete_session(info.id)
        except AgentRTError:
            pass  # the original error matters more; gc cleans up what is left
        for path in written:
            path.unlink(missing_ok=True)
        remove_session_dir(layout, info.id)
        raise


def unique_name(filename: str, n: int, taken: list[Path]) -> str:
    """`filename` if it is a plain, unused blob name, else `<n>.safetensors`."""
    name = PurePosixPath(filename).name
    if not _SAFE_BLOB.match(name) or any(p.name == name for p in taken):
        name = f"{n:06d}.safetensors"
    return name


def as_json(record: Any) -> dict[str, Any]:
    """A frozen store record (SessionInfo, MessageInfo, CheckpointInfo) as a JSON-ready dict."""
    return {f.name: _plain(getattr(record, f.name)) for f in dataclasses.fields(record)}


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def fork_copy(
    store: SessionStore,
    layout: SessionLayout,
    name: str,
    new: str,
    *,
    model: Callable[[CheckpointInfo], str] | None = None,
) -> tuple[SessionCopy, CheckpointInfo]:
    """A SessionCopy of session `name` at its newest checkpoint, with the messages it covers.

    The copy's one checkpoint is an empty delta on that checkpoint (a few KB): it shares the
    original's chain, which the original's retention and deletion then keep for it.

    `model(ckpt)` (optional) verifies the checkpoint against a model and returns the model
    name the fork records; without it the fork keeps the original's model.
    """
    info = store.get_session(name)
    ckpt = store.latest_checkpoint(info)
    if ckpt is None:
        raise CheckpointError(
            f"session {info.name!r} has no usable checkpoint to fork",
            hint="save it first (or run `agentrt sessions gc` if its files were lost)",
        )
    scale = ckpt.slots / info.slots if info.slots else 0.0
    row = {
        **as_json(info),
        "model": model(ckpt) if model is not None else info.model,
        "tokens": ckpt.tokens,
        "slots": ckpt.slots,
        "compression_ratio": ckpt.compression_ratio,
        "kv_bytes": info.kv_bytes if ckpt.slots == info.slots else int(info.kv_bytes * scale),
    }
    messages = [  # what the checkpoint covers (+1: a sampled token not yet fed)
        as_json(m)
        for m in store.messages(info)
        if m.token_end is None or m.token_end <= ckpt.tokens + 1
    ]
    from agentrt.sessions.chain import chain_of
    from agentrt.sessions.checkpoint import fork_delta

    chain = chain_of(store.lineage(info), ckpt)  # every link there (the row check is cheap)
    missing = [c for c in chain if c.missing or not layout.resolve(c.file).is_file()]
    if missing:
        raise CheckpointError(
            f"session {info.name!r} cannot be forked: its checkpoint chain link "
            f"{missing[0].id[:8]} ({missing[0].file}) is missing",
            hint="run `agentrt sessions gc --verify`, then fork an older checkpoint's session",
        )
    # the fork's first checkpoint is an empty delta on the newest one: it shares the chain
    data, info_ = fork_delta(
        layout.resolve(ckpt.file),
        sha256=ckpt.sha256,
        size=ckpt.size_bytes,
        metadata={"session": new, "forked_from": info.name},
    )
    link = {
        **as_json(ckpt),
        "id": f"fork-of-{ckpt.id}",
        "size_bytes": info_.size_bytes,
        "sha256": info_.sha256,
        "format_version": info_.format_version,
        "parent_id": ckpt.id,
        "kind": "incremental",
        "label": None,
        FORK_LINK: True,
    }
    blob = BlobCopy(row=link, filename=f"{ckpt.tokens:09d}-fork.safetensors", write=_bytes(data))
    copy = SessionCopy(name=new, row=row, status="saved", messages=messages, checkpoints=[blob])
    return copy, ckpt


def _bytes(data: bytes) -> Callable[[HashingWriter], None]:
    """A writer for `write_atomic` of bytes held in memory."""

    def write(sink: HashingWriter) -> None:
        sink.write(data)

    return write


# -- export ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Exported:
    """What `export_archive` wrote."""

    info: SessionInfo
    messages: int
    checkpoints: int
    size_bytes: int


def export_archive(
    store: SessionStore,
    layout: SessionLayout,
    name: str,
    file: Path,
    *,
    latest: bool,
    agentrt_version: str,
) -> Exported:
    """Write session `name` (row, messages, checkpoints) to one tar.gz archive (mode 0600)."""
    from agentrt.sessions.atomic import write_atomic
    from agentrt.sessions.chain import BrokenChain, chain_of

    info = store.get_session(name)
    every = store.lineage(info)  # with the links a fork borrows from its parent's chain
    points = []  # the session's restore points whose whole chain is usable
    for c in every:
        try:
            if (
                c.session_id == info.id
                and not c.missing
                and not any(link.missing for link in chain_of(every, c))
            ):
                points.append(c)
        except BrokenChain:
            continue
    if latest and points:
        points = points[-1:]
    wanted = {link.id for c in points for link in chain_of(every, c)}
    rows = [c for c in every if c.id in wanted]  # oldest first: every base before its deltas
    messages = [as_json(m) for m in store.messages(info)]
    exported = {c.id for c in rows}
    checkpoints = []
    for n, c in enumerate(rows):
        entry = as_json(c)
        entry["blob"] = f"blobs/{n:06d}-{PurePosixPath(c.file).name}"
        if c.parent_id not in exported:
            entry["parent_id"] = None
        checkpoints.append(entry)
    manifest = {
        "format": ARCHIVE_FORMAT,
        "format_version": ARCHIVE_VERSION,
        "agentrt_version": agentrt_version,
        "exported_at": iso(datetime.now(UTC)),
        "session": as_json(info),
        "messages": messages,
        "checkpoints": checkpoints,
    }
    done = write_atomic(file, lambda sink: write_archive(sink, layout, manifest))
    return Exported(info, len(messages), len(checkpoints), done.size_bytes)


class _HashingReader:
    """A file-like reader that hashes what passes through it (for `TarFile.addfile`)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.digest = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.digest.update(data)
        return data


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o600, int(time.time())
    return info


def write_archive(sink: HashingWriter, layout: SessionLayout, manifest: dict[str, Any]) -> None:
    """Stream `manifest.json` and every checkpoint blob into a tar.gz on `sink`.

    Each blob is hashed while it is copied; a mismatch with its row raises CheckpointError
    (and `write_atomic` then discards the partial archive).
    """
    with tarfile.open(fileobj=sink, mode="w|gz") as tar:  # type: ignore[call-overload]
        raw = json.dumps(manifest, indent=2, sort_keys=True).encode()
        tar.addfile(_tarinfo(MANIFEST, len(raw)), io.BytesIO(raw))
        for c in manifest["checkpoints"]:
            path = layout.resolve(c["file"])
            if not path.is_file():
                raise CheckpointError(
                    f"checkpoint file {path} is missing",
                    hint="run `agentrt sessions gc` to mark it missing, then export again",
                )
            with open(path, "rb") as f:
                if os.fstat(f.fileno()).st_size != c["size_bytes"]:
                    raise CheckpointError(f"checkpoint file {path} has the wrong size")
                reader = _HashingReader(f)
                tar.addfile(_tarinfo(c["blob"], c["size_bytes"]), reader)
            if reader.digest.hexdigest() != c["sha256"]:
                raise CheckpointError(
                    f"checkpoint file {path} does not match its recorded sha256",
                    hint="run `agentrt sessions gc --verify` to mark it, then export again",
                )


# -- import ------------------------------------------------------------------------------


def _bad_archive(path: Path, why: str) -> CheckpointError:
    return CheckpointError(
        f"archive {path} is corrupt or not an agentrt session archive: {why}",
        hint="nothing was imported; export the session again",
    )


@contextmanager
def open_archive(path: Path) -> Iterator[tarfile.TarFile]:
    """Open a tar.gz for reading; read errors inside the block become CheckpointError."""
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            yield tar
    except FileNotFoundError:
        raise CheckpointError(f"archive {path} does not exist") from None
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise _bad_archive(path, f"{type(err).__name__}: {err}") from None


def _member(tar: tarfile.TarFile, path: Path, name: str) -> IO[bytes]:
    try:
        member = tar.getmember(name)
    except KeyError:
        raise _bad_archive(path, f"member {name!r} is missing") from None
    stream = tar.extractfile(member) if member.isfile() else None
    if stream is None:
        raise _bad_archive(path, f"member {name!r} is not a regular file")
    return stream


def read_manifest(tar: tarfile.TarFile, path: Path) -> dict[str, Any]:
    """The archive's manifest, with its format and required keys checked."""
    try:
        manifest = json.loads(_member(tar, path, MANIFEST).read())
    except (ValueError, UnicodeDecodeError) as err:
        raise _bad_archive(path, f"manifest.json is not JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != ARCHIVE_FORMAT:
        raise _bad_archive(path, f"manifest format is not {ARCHIVE_FORMAT!r}")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > ARCHIVE_VERSION:
        raise CheckpointError(
            f"archive {path} has format version {version!r}; this agentrt reads up to "
            f"{ARCHIVE_VERSION}",
            hint="upgrade agentrt to import it",
        )
    session = manifest.get("session")
    messages = manifest.get("messages")
    checkpoints = manifest.get("checkpoints")
    if not (
        isinstance(session, dict) and isinstance(messages, list) and isinstance(checkpoints, list)
    ):
        raise _bad_archive(path, "manifest lacks session, messages or checkpoints")
    for c in checkpoints:
        keys = ("blob", "sha256", "size_bytes", "fingerprint", "id", "kind")
        if not isinstance(c, dict) or any(k not in c for k in keys):
            raise _bad_archive(path, "a checkpoint entry lacks blob, sha256, size or fingerprint")
    problem = manifest_problem(session, messages, checkpoints)
    if problem is not None:
        raise _bad_archive(path, problem)
    return manifest


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def _field_problem(where: str, entry: dict[str, Any], kinds: Mapping[str, str]) -> str | None:
    """The first field of `entry` whose value has the wrong type (absent ones are skipped)."""
    checks: dict[str, Callable[[Any], bool]] = {
        "int": _is_int,
        "number": _is_number,
        "str": lambda v: isinstance(v, str),
        "bool": lambda v: isinstance(v, bool),
        "dict?": lambda v: v is None or isinstance(v, dict),
        "str?": lambda v: v is None or isinstance(v, str),
        "int?": lambda v: v is None or _is_int(v),
        "strs?": lambda v: (
            v is None or (isinstance(v, list) and all(isinstance(t, str) for t in v))
        ),
        "dicts?": lambda v: (
            v is None or (isinstance(v, list) and all(isinstance(t, dict) for t in v))
        ),
    }
    words = {
        "int": "a whole number >= 0",
        "number": "a finite number >= 0",
        "str": "a string",
        "bool": "true or false",
        "dict?": "an object or null",
        "str?": "a string or null",
        "int?": "a whole number >= 0 or null",
        "strs?": "a list of strings or null",
        "dicts?": "a list of objects or null",
    }
    for key, kind in kinds.items():
        if key in entry and not checks[kind](entry[key]):
            return f"{where} field {key!r} is {entry[key]!r}, expected {words[kind]}"
    return None


def manifest_problem(
    session: dict[str, Any], messages: list[Any], checkpoints: list[dict[str, Any]]
) -> str | None:
    """What is wrong with the types of a manifest's entries, or None (nothing is coerced:
    `"false"` is not false, `"12"` is not 12)."""
    from agentrt.sessions.models import CHECKPOINT_KINDS, MESSAGE_ROLES

    problem = _field_problem("the session", session, SESSION_FIELDS)
    if problem is not None:
        return problem
    for n, m in enumerate(messages, start=1):
        if not isinstance(m, dict):
            return f"message {n} is not an object"
        if "content" not in m or "role" not in m:
            return f"message {n} lacks its role or content"
        problem = _field_problem(f"message {n}", m, MESSAGE_FIELDS)
        if problem is not None:
            return problem
        if m["role"] not in MESSAGE_ROLES:
            return f"message {n} has role {m['role']!r}, expected one of {', '.join(MESSAGE_ROLES)}"
        start, end = m.get("token_start"), m.get("token_end")
        if start is not None and end is not None and start > end:
            return f"message {n} has token_start {start} after token_end {end}"
    for n, c in enumerate(checkpoints, start=1):
        problem = _field_problem(f"checkpoint {n}", c, CHECKPOINT_FIELDS)
        if problem is not None:
            return problem
        if c["kind"] not in CHECKPOINT_KINDS:
            return f"checkpoint {n} has kind {c['kind']!r}"
        earlier = {e.get("id") for e in checkpoints[: n - 1]}
        if c["kind"] == "incremental" and c.get("parent_id") not in earlier:
            return (
                f"incremental checkpoint {n} comes without its base checkpoint "
                f"{c.get('parent_id')!r} (export the whole chain)"
            )
        if not _SHA256.match(c["sha256"]):
            return f"checkpoint {n} has sha256 {c['sha256']!r}, expected 64 hex digits"
        if PurePosixPath(c["blob"]).is_absolute() or ".." in PurePosixPath(c["blob"]).parts:
            return f"checkpoint {n} names blob {c['blob']!r} outside the archive"
    return None


SESSION_FIELDS = {
    "name": "str",
    "model": "str",
    "fingerprint": "str",
    "tokens": "int",
    "slots": "int",
    "kv_bytes": "int",
    "compression_ratio": "number",
    "dms_config": "dict?",
    "tags": "strs?",
    "pinned": "bool",
    "status": "str",
}
MESSAGE_FIELDS = {
    "role": "str",
    "content": "str",
    "tool_calls": "dicts?",
    "token_start": "int?",
    "token_end": "int?",
}
CHECKPOINT_FIELDS = {
    "blob": "str",
    "sha256": "str",
    "size_bytes": "int",
    "fingerprint": "str",
    "id": "str",
    "kind": "str",
    "tokens": "int",
    "slots": "int",
    "compression_ratio": "number",
    "format_version": "int",
    "parent_id": "str?",
    "label": "str?",
}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def verify_blob(tar: tarfile.TarFile, path: Path, entry: Mapping[str, Any]) -> None:
    """Check one archived blob: size, SHA-256, and a checkpoint header with the right fingerprint."""
    from agentrt.sessions.atomic import safetensors_metadata
    from agentrt.sessions.checkpoint import FORMAT_NAME, FORMAT_VERSION

    stream = _member(tar, path, entry["blob"])
    digest, size, head = hashlib.sha256(), 0, b""
    while chunk := stream.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
        if len(head) < CHUNK:
            head += chunk[: CHUNK - len(head)]
    if size != entry["size_bytes"] or digest.hexdigest() != entry["sha256"]:
        raise _bad_archive(
            path, f"checkpoint blob {entry['blob']!r} does not match its size and sha256"
        )
    header = safetensors_metadata(head, size)
    if header is None or header.get("format") != FORMAT_NAME:
        raise _bad_archive(path, f"{entry['blob']!r} is not an agentrt checkpoint")
    if header.get("fingerprint") != entry["fingerprint"]:
        raise _bad_archive(path, f"{entry['blob']!r} names another model than its manifest entry")
    version = str(header.get("format_version", ""))
    if not version.isdigit():
        raise _bad_archive(path, f"{entry['blob']!r} has no valid format_version")
    if int(version) > FORMAT_VERSION:
        raise CheckpointError(
            f"{entry['blob']!r} has checkpoint format {header.get('format_version')}; this "
            f"agentrt reads up to {FORMAT_VERSION}",
            hint="upgrade agentrt to import it",
        )


def tar_writer(path: Path, member: str) -> Callable[[HashingWriter], None]:
    """A writer for `write_atomic` that copies one archive member (reopening the archive)."""

    def write(sink: HashingWriter) -> None:
        with open_archive(path) as tar:
            stream = _member(tar, path, member)
            while chunk := stream.read(CHUNK):
                sink.write(chunk)

    return write


def copy_from_manifest(manifest: dict[str, Any], path: Path, name: str) -> SessionCopy:
    """A SessionCopy that recreates the archived session under `name` (rows checked)."""
    session = manifest["session"]
    need = {"model", "fingerprint", "tokens", "slots", "kv_bytes", "compression_ratio"}
    need_ckpt = {"tokens", "slots", "compression_ratio", "format_version"}
    if not need <= set(session) or any(not need_ckpt <= set(c) for c in manifest["checkpoints"]):
        raise _bad_archive(path, "the session or a checkpoint entry lacks fields")
    if any(not isinstance(m, dict) or "role" not in m for m in manifest["messages"]):
        raise _bad_archive(path, "a message entry is malformed")
    return SessionCopy(
        name=name,
        row=session,
        status="archived" if session.get("status") == "archived" else "saved",
        messages=manifest["messages"],
        checkpoints=[
            BlobCopy(row=c, filename=str(c["blob"]), write=tar_writer(path, c["blob"]))
            for c in manifest["checkpoints"]
        ],
    )


def prepare_import(file: Path, as_name: str | None, store: SessionStore | None) -> SessionCopy:
    """Verify an archive (manifest, every blob) and refuse a taken name; writes nothing."""
    with open_archive(file) as tar:
        manifest = read_manifest(tar, file)
        name = as_name or str(manifest["session"].get("name", ""))
        if store is not None:
            _refuse_taken(store, name, renamed=as_name is not None)
        for entry in manifest["checkpoints"]:
            verify_blob(tar, file, entry)
    return copy_from_manifest(manifest, file, name)


def _refuse_taken(store: SessionStore, name: str, *, renamed: bool) -> None:
    if all(s.name != name for s in store.list_sessions()):
        return
    hint = "choose another name" if renamed else "import it under another name with --as NEW"
    raise SessionError(f"a session named {name!r} already exists", hint=hint)
