"""`SessionStore`: the thin data-access layer over the catalog that the engine and CLI use.

Every method runs one short transaction, translates driver errors in one place
(`translate_errors`) and returns frozen records, never ORM objects. Sessions are named
by name or id (`SessionRef`); an unknown one raises `SessionError` listing close names.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import timedelta
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from agentrt.errors import CheckpointError, SessionError
from agentrt.sessions.db_errors import translate_errors
from agentrt.sessions.models import (
    CHECKPOINT_KINDS,
    MESSAGE_ROLES,
    NAME_LENGTH,
    SESSION_STATUSES,
    CheckpointRow,
    MessageRow,
    SessionRow,
    utcnow,
)
from agentrt.sessions.records import CheckpointInfo, MessageInfo, SessionInfo, as_utc
from agentrt.sessions.runs import RunStore

SessionRef = str | SessionInfo
_UUID_LIKE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
_ID_PREFIX = re.compile(r"^[0-9a-f-]{8,36}$", re.I)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class SessionStore:
    """Sessions, their messages and checkpoints in the catalog (batch runs via `.runs`)."""

    def __init__(self, sessionmaker: sessionmaker[Session]) -> None:
        self._sessionmaker = sessionmaker
        self.runs = RunStore(sessionmaker)

    def close(self) -> None:
        """Release the database connections (the store is unusable afterwards)."""
        bind = self._sessionmaker.kw.get("bind")
        if bind is not None:
            bind.dispose()

    # --- sessions ---------------------------------------------------------------------

    def create_session(
        self,
        name: str,
        model: str,
        fingerprint: str,
        dms_config: Mapping[str, Any],
        *,
        tags: Sequence[str] = (),
        pinned: bool = False,
        session_id: str | None = None,
        first_checkpoint: Mapping[str, Any] | None = None,
    ) -> SessionInfo:
        """Add a new active session; a taken name raises `SessionError`.

        With `first_checkpoint` (the keyword arguments of `add_checkpoint`, for a blob already
        written) the session row and its first checkpoint row commit in one transaction, so
        no crash leaves a session without a checkpoint.
        """
        _check_name(name)
        if first_checkpoint is not None:
            _check_relative(str(first_checkpoint["file"]))
        taken = f"a session named {name!r} already exists"
        with self._tx(f"creating session {name!r}", conflict=taken) as s:
            if s.scalar(select(SessionRow.id).where(SessionRow.name == name)) is not None:
                raise SessionError(taken, hint="choose another name, or resume that session")
            row = SessionRow(
                **({"id": session_id} if session_id is not None else {}),
                name=name,
                model=model,
                model_fingerprint=fingerprint,
                dms_config=dict(dms_config),
                status="active",
                tokens=0,
                slots=0,
                kv_bytes=0,
                compression_ratio=1.0,
                pinned=pinned,
                tags=list(tags),
            )
            s.add(row)
            s.flush()
            if first_checkpoint is not None:
                c = dict(first_checkpoint)
                kind = str(c.pop("kind", "full"))
                _check_choice("checkpoint kind", kind, CHECKPOINT_KINDS)
                if kind == "incremental":  # a fork's first save: a delta on its parent's chain
                    base = s.get(CheckpointRow, c.get("parent_id") or "")
                    if base is None:
                        raise CheckpointError(
                            f"the base checkpoint {c.get('parent_id')!r} of this fork is gone "
                            "(its session pruned or removed it meanwhile)",
                            hint="save the fork again: its next save writes a full checkpoint",
                        )
                s.add(
                    CheckpointRow(
                        session_id=row.id,
                        created_at=utcnow(),
                        kind=kind,
                        missing=False,
                        **c,
                    )
                )
                s.flush()
            return SessionInfo.from_row(row)

    def name_taken(self, name: str) -> SessionInfo | None:
        """The session with exactly this name, or None."""
        with self._tx(f"reading session {name!r}") as s:
            row = s.scalars(select(SessionRow).where(SessionRow.name == name)).first()
            return None if row is None else SessionInfo.from_row(row)

    def get_session(self, name_or_id: str) -> SessionInfo:
        """The session with this name, id or unique id prefix (≥ 8 characters)."""
        with self._tx(f"reading session {name_or_id!r}") as s:
            return SessionInfo.from_row(self._row(s, name_or_id))

    def list_sessions(self, *, status: str | None = None) -> list[SessionInfo]:
        """All sessions (optionally of one status), most recently updated first."""
        if status is not None:
            _check_choice("session status", status, SESSION_STATUSES)
        query = select(SessionRow).order_by(SessionRow.updated_at.desc(), SessionRow.name)
        if status is not None:
            query = query.where(SessionRow.status == status)
        with self._tx("listing sessions") as s:
            return [SessionInfo.from_row(row) for row in s.scalars(query)]

    def update_session_stats(
        self,
        session: SessionRef,
        *,
        tokens: int,
        slots: int,
        kv_bytes: int,
        compression_ratio: float,
    ) -> SessionInfo:
        """Record the KV statistics the engine reports for a session."""
        with self._tx("updating session statistics") as s:
            row = self._row(s, session)
            row.tokens, row.slots, row.kv_bytes = tokens, slots, kv_bytes
            row.compression_ratio = compression_ratio
            row.updated_at = utcnow()
            s.flush()
            return SessionInfo.from_row(row)

    def set_status(self, session: SessionRef, status: str) -> SessionInfo:
        """Set a session's status (active, idle, saved or archived)."""
        _check_choice("session status", status, SESSION_STATUSES)
        with self._tx(f"setting a session status to {status!r}") as s:
            row = self._row(s, session)
            row.status = status
            row.updated_at = utcnow()
            s.flush()
            return SessionInfo.from_row(row)

    def tag_session(
        self, session: SessionRef, *, pinned: bool | None = None, tags: Sequence[str] | None = None
    ) -> SessionInfo:
        """Change a session's pinned flag and/or replace its tags."""
        with self._tx("tagging a session") as s:
            row = self._row(s, session)
            if pinned is not None:
                row.pinned = pinned
            if tags is not None:
                row.tags = list(tags)
            row.updated_at = utcnow()
            s.flush()
            return SessionInfo.from_row(row)

    def rename_session(self, session: SessionRef, new_name: str) -> SessionInfo:
        """Give a session a new, unused name."""
        _check_name(new_name)
        taken = f"a session named {new_name!r} already exists"
        with self._tx(f"renaming a session to {new_name!r}", conflict=taken) as s:
            row = self._row(s, session)
            other = s.scalar(select(SessionRow.id).where(SessionRow.name == new_name))
            if other is not None and other != row.id:
                raise SessionError(taken, hint="choose another name")
            row.name = new_name
            row.updated_at = utcnow()
            s.flush()
            return SessionInfo.from_row(row)

    def delete_session(self, session: SessionRef, *, keep_checkpoints: bool = False) -> list[str]:
        """Delete a session with its messages and checkpoint rows.

        Returns the checkpoint files (relative paths) the caller should now delete from
        disk, or [] with `keep_checkpoints=True`. Run items keep their results.
        """
        with self._tx("deleting a session") as s:
            row = self._row(s, session)
            handed = _hand_over_to_forks(s, row.id)
            files = list(
                s.scalars(
                    select(CheckpointRow.file)
                    .where(CheckpointRow.session_id == row.id)
                    .order_by(CheckpointRow.created_at)
                )
            )
            s.delete(row)
        return [] if keep_checkpoints else [f for f in files if f not in handed]

    # --- messages -----------------------------------------------------------------------

    def add_message(
        self,
        session: SessionRef,
        role: str,
        content: str,
        *,
        tool_calls: Sequence[Mapping[str, Any]] | None = None,
        token_start: int | None = None,
        token_end: int | None = None,
    ) -> MessageInfo:
        """Append a message to a session; its `seq` is one past the last one."""
        _check_choice("message role", role, MESSAGE_ROLES)
        if token_start is not None and token_end is not None and not 0 <= token_start <= token_end:
            raise ValueError(f"bad token span [{token_start}, {token_end})")
        busy = "another writer appended a message to this session at the same time"
        with self._tx("adding a message", conflict=busy) as s:
            row = self._row(s, session, lock=True)
            last = s.scalar(select(func.max(MessageRow.seq)).where(MessageRow.session_id == row.id))
            message = MessageRow(
                session_id=row.id,
                seq=(last or 0) + 1,
                role=role,
                content=content,
                tool_calls=None if tool_calls is None else [dict(c) for c in tool_calls],
                token_start=token_start,
                token_end=token_end,
            )
            s.add(message)
            row.updated_at = utcnow()
            s.flush()
            return MessageInfo.from_row(message)

    def messages(self, session: SessionRef) -> list[MessageInfo]:
        """A session's messages in order."""
        with self._tx("reading messages") as s:
            row = self._row(s, session)
            query = (
                select(MessageRow).where(MessageRow.session_id == row.id).order_by(MessageRow.seq)
            )
            return [MessageInfo.from_row(m) for m in s.scalars(query)]

    # --- checkpoints --------------------------------------------------------------------

    def add_checkpoint(
        self,
        session: SessionRef,
        *,
        file: str,
        size_bytes: int,
        sha256: str,
        tokens: int,
        slots: int,
        compression_ratio: float,
        fingerprint: str,
        format_version: int,
        parent_id: str | None = None,
        kind: str = "full",
    ) -> CheckpointInfo:
        """Record a checkpoint blob already written (fsynced, renamed) under the checkpoint folder."""
        _check_choice("checkpoint kind", kind, CHECKPOINT_KINDS)
        _check_relative(file)
        if not _SHA256.match(sha256):
            raise CheckpointError(f"sha256 of {file!r} must be 64 lowercase hex digits")
        if kind == "incremental" and parent_id is None:
            raise CheckpointError("an incremental checkpoint needs a parent_id")
        with self._tx("recording a checkpoint") as s:
            row = self._row(s, session, lock=True)
            if parent_id is not None:
                parent = s.get(CheckpointRow, parent_id)
                # a delta may build on another session's checkpoint (the one it was forked from)
                if parent is None or (parent.session_id != row.id and kind != "incremental"):
                    raise CheckpointError(
                        f"parent checkpoint {parent_id!r} does not belong to session {row.name!r}"
                    )
            last = s.scalar(
                select(func.max(CheckpointRow.created_at)).where(CheckpointRow.session_id == row.id)
            )
            now = utcnow()
            if last is not None and as_utc(last) >= now:
                now = as_utc(last) + timedelta(microseconds=1)  # keep "latest" well-defined
            checkpoint = CheckpointRow(
                session_id=row.id,
                created_at=now,
                file=file,
                size_bytes=size_bytes,
                sha256=sha256,
                tokens=tokens,
                slots=slots,
                compression_ratio=compression_ratio,
                fingerprint=fingerprint,
                format_version=format_version,
                parent_id=parent_id,
                kind=kind,
                missing=False,
            )
            s.add(checkpoint)
            row.updated_at = now
            s.flush()
            return CheckpointInfo.from_row(checkpoint)

    def latest_checkpoint(
        self, session: SessionRef, *, include_missing: bool = False
    ) -> CheckpointInfo | None:
        """The newest checkpoint of a session (skipping missing blobs), or None."""
        with self._tx("reading checkpoints") as s:
            row = self._row(s, session)
            query = select(CheckpointRow).where(CheckpointRow.session_id == row.id)
            if not include_missing:
                query = query.where(CheckpointRow.missing.is_(False))
            found = s.scalars(query.order_by(CheckpointRow.created_at.desc()).limit(1)).first()
            return None if found is None else CheckpointInfo.from_row(found)

    def checkpoints(self, session: SessionRef | None = None) -> list[CheckpointInfo]:
        """A session's checkpoints oldest first; with no session, every checkpoint."""
        with self._tx("reading checkpoints") as s:
            query = select(CheckpointRow).order_by(
                CheckpointRow.session_id, CheckpointRow.created_at
            )
            if session is not None:
                query = query.where(CheckpointRow.session_id == self._row(s, session).id)
            return [CheckpointInfo.from_row(c) for c in s.scalars(query)]

    def lineage(self, session: SessionRef) -> list[CheckpointInfo]:
        """A session's checkpoints plus the links its chains borrow from the sessions it was
        forked from (their deltas' ancestors), oldest first: what restoring any of them reads."""
        with self._tx("reading checkpoints") as s:
            sid = self._row(s, session).id
            rows = list(s.scalars(select(CheckpointRow).where(CheckpointRow.session_id == sid)))
            have = {r.id for r in rows}
            todo = {r.parent_id for r in rows if r.kind == "incremental" and r.parent_id} - have
            while todo:
                found = list(s.scalars(select(CheckpointRow).where(CheckpointRow.id.in_(todo))))
                rows += found
                have |= {r.id for r in found}
                todo = {r.parent_id for r in found if r.kind == "incremental" and r.parent_id}
                todo -= have
            rows.sort(key=lambda r: (as_utc(r.created_at), r.id))
            return [CheckpointInfo.from_row(c) for c in rows]

    def checkpoint(self, checkpoint_id: str) -> CheckpointInfo | None:
        """The checkpoint with this exact id, or None."""
        with self._tx("reading checkpoints") as s:
            row = s.get(CheckpointRow, checkpoint_id)
            return None if row is None else CheckpointInfo.from_row(row)

    def checkpoint_files(self, session_id: str) -> list[str]:
        """The blob files of the session with this exact id ([] for an unknown id)."""
        with self._tx("reading checkpoints") as s:
            query = select(CheckpointRow.file).where(CheckpointRow.session_id == session_id)
            return list(s.scalars(query))

    def session_exists(self, session_id: str) -> bool:
        """Whether a session with this exact id is in the catalog."""
        with self._tx("reading sessions") as s:
            return s.get(SessionRow, session_id) is not None

    def mark_checkpoint_missing(self, checkpoint_id: str, missing: bool = True) -> CheckpointInfo:
        """Flag a checkpoint whose blob is gone or corrupt (or clear the flag)."""
        with self._tx("marking a checkpoint missing") as s:
            row = self._checkpoint(s, checkpoint_id)
            row.missing = missing
            s.flush()
            return CheckpointInfo.from_row(row)

    def label_checkpoint(self, checkpoint_id: str, label: str | None) -> CheckpointInfo:
        """Name a checkpoint (a snapshot retention keeps until unlabelled), or clear its label.

        A label is unique within its session; giving it to another checkpoint raises.
        """
        if label is not None:
            _check_label(label)
        with self._tx("labelling a checkpoint") as s:
            row = self._checkpoint(s, checkpoint_id)
            if label is not None:
                other = s.scalar(
                    select(CheckpointRow.id).where(
                        CheckpointRow.session_id == row.session_id, CheckpointRow.label == label
                    )
                )
                if other is not None and other != row.id:
                    raise SessionError(
                        f"label {label!r} already names checkpoint {other[:8]} of this session",
                        hint="untag it first (`agentrt sessions untag NAME LABEL`), or choose "
                        "another label",
                    )
            row.label = label
            s.flush()
            return CheckpointInfo.from_row(row)

    def delete_checkpoint(self, checkpoint_id: str) -> str:
        """Delete a checkpoint row; returns its file for the caller to remove from disk."""
        with self._tx("deleting a checkpoint") as s:
            row = self._checkpoint(s, checkpoint_id)
            child = s.scalar(
                select(CheckpointRow.id).where(
                    CheckpointRow.parent_id == row.id, CheckpointRow.kind == "incremental"
                )
            )
            if child is not None:
                raise CheckpointError(
                    f"checkpoint {row.id} is the base of incremental checkpoint {child}",
                    hint="delete the incremental checkpoints first",
                )
            if row.label is not None:
                raise CheckpointError(
                    f"checkpoint {row.id} is the named snapshot {row.label!r}",
                    hint=f"untag it first (`agentrt sessions untag NAME {row.label}`)",
                )
            s.delete(row)
            return row.file

    # --- internals ----------------------------------------------------------------------

    @contextmanager
    def _tx(self, action: str, *, conflict: str | None = None) -> Iterator[Session]:
        with translate_errors(action, conflict=conflict), self._sessionmaker.begin() as s:
            yield s

    @staticmethod
    def _row(s: Session, ref: SessionRef, *, lock: bool = False) -> SessionRow:
        """The session row; `lock=True` holds its row lock until commit (PostgreSQL: serializes
        appends to one session; SQLite's BEGIN IMMEDIATE already serializes all writers)."""
        if isinstance(ref, SessionInfo):
            ref = ref.id
        by_name = select(SessionRow).where(SessionRow.name == ref)
        row = s.scalars(by_name.with_for_update() if lock else by_name).first()
        if row is None:
            row = s.get(SessionRow, ref, with_for_update=lock or None)
        if row is None and _ID_PREFIX.match(ref):
            matches = s.scalars(
                select(SessionRow).where(SessionRow.id.startswith(ref.lower(), autoescape=True))
            ).all()
            row = matches[0] if len(matches) == 1 else None
        if row is not None:
            return row
        names = list(s.scalars(select(SessionRow.name)))
        close = difflib.get_close_matches(ref, names, n=5, cutoff=0.6)
        message = f"no session named {ref!r}"
        if close:
            message += f"; did you mean {', '.join(repr(n) for n in close)}?"
        raise SessionError(message, hint="list sessions with `agentrt sessions ls`")

    @staticmethod
    def _checkpoint(s: Session, checkpoint_id: str) -> CheckpointRow:
        row = s.get(CheckpointRow, checkpoint_id)
        if row is None:
            raise CheckpointError(f"no checkpoint with id {checkpoint_id!r}")
        return row


def _hand_over_to_forks(s: Session, session_id: str) -> set[str]:
    """Give the checkpoints that forks' deltas build on to those forks (their files stay
    where they are); returns those files. Called inside the deleting transaction."""
    own = {
        r.id: r
        for r in s.scalars(select(CheckpointRow).where(CheckpointRow.session_id == session_id))
    }
    if not own:
        return set()
    children = s.scalars(
        select(CheckpointRow).where(
            CheckpointRow.parent_id.in_(list(own)),
            CheckpointRow.session_id != session_id,
            CheckpointRow.kind == "incremental",
        )
    )
    handed: set[str] = set()
    for child in children:
        link = own.get(child.parent_id or "")
        while link is not None and link.session_id == session_id:  # up to the full one
            link.session_id, link.label = child.session_id, None
            handed.add(link.file)
            link = own.get(link.parent_id or "") if link.kind == "incremental" else None
    s.flush()
    return handed


def _check_choice(what: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise SessionError(f"unknown {what} {value!r}; expected one of {', '.join(allowed)}")


def _check_name(name: str) -> None:
    problems = []
    if not name.strip():
        problems.append("it is empty")
    if len(name) > NAME_LENGTH:
        problems.append(f"it is longer than {NAME_LENGTH} characters")
    if name != name.strip():
        problems.append("it starts or ends with whitespace")
    if any(not ch.isprintable() for ch in name):
        problems.append("it contains control characters")
    if "/" in name or "\\" in name:
        problems.append("it contains a slash")
    if _UUID_LIKE.match(name):
        problems.append("it looks like a session id")
    if problems:
        raise SessionError(f"invalid session name {name!r}: {'; '.join(problems)}")


def _check_label(label: str) -> None:
    if not label.strip() or len(label) > NAME_LENGTH or any(not c.isprintable() for c in label):
        raise SessionError(
            f"invalid checkpoint label {label!r}",
            hint=f"use 1 to {NAME_LENGTH} printable characters",
        )


def _check_relative(file: str) -> None:
    posix, windows = PurePosixPath(file), PureWindowsPath(file)
    if not file or posix.is_absolute() or windows.is_absolute() or ".." in posix.parts:
        raise CheckpointError(
            f"checkpoint file {file!r} must be a path relative to the checkpoint folder"
        )


__all__ = ["SessionRef", "SessionStore"]
