"""Plain frozen records the store hands out instead of ORM objects.

Records that carry user data (message text, tool calls, run outputs and errors, run
options) have a redacted `__repr__`: logs show sizes, never the text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agentrt.sessions.models import CheckpointRow, MessageRow, RunItemRow, RunRow, SessionRow


def as_utc(value: datetime) -> datetime:
    """`value` as an aware UTC datetime (SQLite returns naive values, stored in UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _maybe_utc(value: datetime | None) -> datetime | None:
    return None if value is None else as_utc(value)


def _size(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, str):
        return f"<{len(value)} chars>"
    if isinstance(value, list | tuple | dict):
        return f"<{type(value).__name__} of {len(value)}>"
    return f"<{type(value).__name__}>"


@dataclass(frozen=True)
class SessionInfo:
    """A session row: identity, model, DMS config and KV statistics."""

    id: str
    name: str
    model: str
    fingerprint: str
    dms_config: Mapping[str, Any]
    status: str
    tokens: int
    slots: int
    kv_bytes: int
    compression_ratio: float
    created_at: datetime
    updated_at: datetime
    pinned: bool
    tags: tuple[str, ...]

    @classmethod
    def from_row(cls, row: SessionRow) -> SessionInfo:
        """Copy a `SessionRow` (detached from the ORM session)."""
        return cls(
            id=row.id,
            name=row.name,
            model=row.model,
            fingerprint=row.model_fingerprint,
            dms_config=dict(row.dms_config or {}),
            status=row.status,
            tokens=row.tokens,
            slots=row.slots,
            kv_bytes=row.kv_bytes,
            compression_ratio=row.compression_ratio,
            created_at=as_utc(row.created_at),
            updated_at=as_utc(row.updated_at),
            pinned=row.pinned,
            tags=tuple(row.tags or ()),
        )


@dataclass(frozen=True, repr=False)
class MessageInfo:
    """One message; `content` and `tool_calls` are user data (redacted in repr)."""

    id: str
    session_id: str
    seq: int
    role: str
    content: str
    tool_calls: tuple[Mapping[str, Any], ...] | None
    token_start: int | None
    token_end: int | None
    created_at: datetime

    @classmethod
    def from_row(cls, row: MessageRow) -> MessageInfo:
        """Copy a `MessageRow`."""
        calls = None if row.tool_calls is None else tuple(dict(c) for c in row.tool_calls)
        return cls(
            id=row.id,
            session_id=row.session_id,
            seq=row.seq,
            role=row.role,
            content=row.content,
            tool_calls=calls,
            token_start=row.token_start,
            token_end=row.token_end,
            created_at=as_utc(row.created_at),
        )

    def __repr__(self) -> str:
        return (
            f"MessageInfo(id={self.id!r}, session_id={self.session_id!r}, seq={self.seq}, "
            f"role={self.role!r}, content={_size(self.content)}, "
            f"tool_calls={_size(self.tool_calls)}, "
            f"tokens=[{self.token_start}, {self.token_end}))"
        )


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint: where its blob is (relative path), how big, what it holds."""

    id: str
    session_id: str
    created_at: datetime
    file: str
    size_bytes: int
    sha256: str
    tokens: int
    slots: int
    compression_ratio: float
    fingerprint: str
    format_version: int
    parent_id: str | None
    kind: str
    missing: bool
    label: str | None = None

    @classmethod
    def from_row(cls, row: CheckpointRow) -> CheckpointInfo:
        """Copy a `CheckpointRow`."""
        return cls(
            id=row.id,
            session_id=row.session_id,
            created_at=as_utc(row.created_at),
            file=row.file,
            size_bytes=row.size_bytes,
            sha256=row.sha256,
            tokens=row.tokens,
            slots=row.slots,
            compression_ratio=row.compression_ratio,
            fingerprint=row.fingerprint,
            format_version=row.format_version,
            parent_id=row.parent_id,
            kind=row.kind,
            missing=row.missing,
            label=row.label,
        )


@dataclass(frozen=True, repr=False)
class RunInfo:
    """One batch run; `options` may hold prompts (redacted in repr)."""

    id: str
    task_file: str
    task_name: str
    model: str
    status: str
    started_at: datetime
    finished_at: datetime | None
    options: Mapping[str, Any]

    @classmethod
    def from_row(cls, row: RunRow) -> RunInfo:
        """Copy a `RunRow`."""
        return cls(
            id=row.id,
            task_file=row.task_file,
            task_name=row.task_name,
            model=row.model,
            status=row.status,
            started_at=as_utc(row.started_at),
            finished_at=_maybe_utc(row.finished_at),
            options=dict(row.options or {}),
        )

    def __repr__(self) -> str:
        return (
            f"RunInfo(id={self.id!r}, task_name={self.task_name!r}, model={self.model!r}, "
            f"status={self.status!r}, options=<keys {sorted(self.options)}>)"
        )


@dataclass(frozen=True, repr=False)
class RunItemInfo:
    """One input of a run; `output` and `error` are user data (redacted in repr)."""

    id: str
    run_id: str
    input_id: str
    status: str
    output: Any
    error: str | None
    session_id: str | None
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_row(cls, row: RunItemRow) -> RunItemInfo:
        """Copy a `RunItemRow`."""
        return cls(
            id=row.id,
            run_id=row.run_id,
            input_id=row.input_id,
            status=row.status,
            output=row.output,
            error=row.error,
            session_id=row.session_id,
            started_at=_maybe_utc(row.started_at),
            finished_at=_maybe_utc(row.finished_at),
        )

    def __repr__(self) -> str:
        return (
            f"RunItemInfo(id={self.id!r}, run_id={self.run_id!r}, input_id={self.input_id!r}, "
            f"status={self.status!r}, output={_size(self.output)}, error={_size(self.error)})"
        )


__all__ = ["CheckpointInfo", "MessageInfo", "RunInfo", "RunItemInfo", "SessionInfo", "as_utc"]
