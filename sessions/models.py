"""SQLAlchemy models of the catalog: sessions, messages, checkpoints, runs and run items.

The schema changes only through Alembic revisions in `agentrt.sessions.migrations`;
`tests/sessions/test_migrations.py` checks that these models and the migrated DDL agree.
Timestamps are stored in UTC (`DateTime(timezone=True)`; SQLite keeps them naive and the
store re-attaches UTC). Ids are UUID strings so rows can move between databases
(export/import) without renumbering.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Deterministic constraint names, so batch migrations on SQLite can address them.
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

SESSION_STATUSES: tuple[str, ...] = ("active", "idle", "saved", "archived")
MESSAGE_ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")
CHECKPOINT_KINDS: tuple[str, ...] = ("full", "incremental")
RUN_STATUSES: tuple[str, ...] = ("running", "done", "failed", "cancelled")
RUN_ITEM_STATUSES: tuple[str, ...] = ("pending", "running", "done", "failed", "skipped")

ID_LENGTH = 36
NAME_LENGTH = 200
PATH_LENGTH = 1024
FINGERPRINT_LENGTH = 128
STATUS_LENGTH = 16


def new_id() -> str:
    """A fresh primary key (UUID4 string)."""
    return str(uuid.uuid4())


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def _one_of(column: str, values: tuple[str, ...]) -> str:
    """SQL for a CHECK that `column` holds one of `values` (enum stored as a string)."""
    quoted = ", ".join(f"'{v}'" for v in values)
    return f"{column} IN ({quoted})"


class Base(DeclarativeBase):
    """Declarative base of every catalog table (one MetaData with a naming convention)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class SessionRow(Base):
    """One persistent agent session: its model, DMS config and KV statistics."""

    __tablename__ = "sessions"
    __table_args__ = (CheckConstraint(_one_of("status", SESSION_STATUSES), name="status"),)

    id: Mapped[str] = mapped_column(
        String(ID_LENGTH), primary_key=True, default=new_id, doc="UUID4 string."
    )
    name: Mapped[str] = mapped_column(
        String(NAME_LENGTH), unique=True, doc="User-facing name, unique in the catalog."
    )
    model: Mapped[str] = mapped_column(
        String(PATH_LENGTH), doc="Model name as given by the user (hub id or local folder)."
    )
    model_fingerprint: Mapped[str] = mapped_column(
        String(FINGERPRINT_LENGTH), doc="Fingerprint of model, tokenizer, DMS config and dtype."
    )
    dms_config: Mapped[dict[str, Any]] = mapped_column(
        JSON, doc="DMS hyper-parameters (DMSConfig as a dict, NVIDIA key names)."
    )
    status: Mapped[str] = mapped_column(
        String(STATUS_LENGTH), default="active", doc="One of SESSION_STATUSES."
    )
    tokens: Mapped[int] = mapped_column(BigInteger, default=0, doc="Tokens seen so far.")
    slots: Mapped[int] = mapped_column(
        BigInteger, default=0, doc="KV slots held, summed over layers and KV heads."
    )
    kv_bytes: Mapped[int] = mapped_column(BigInteger, default=0, doc="Bytes of KV cache held.")
    compression_ratio: Mapped[float] = mapped_column(
        Float, default=1.0, doc="Tokens / slots, window included."
    )
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, doc="Creation time (UTC)."
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow, doc="Last change (UTC)."
    )
    pinned: Mapped[bool] = mapped_column(
        Boolean, default=False, doc="Pinned sessions are never swapped out or collected."
    )
    tags: Mapped[list[str]] = mapped_column(JSON, default=list, doc="Free-form labels.")


class MessageRow(Base):
    """One chat message of a session, with its token span in the session's stream."""

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("session_id", "seq"),
        CheckConstraint(_one_of("role", MESSAGE_ROLES), name="role"),
    )

    id: Mapped[str] = mapped_column(
        String(ID_LENGTH), primary_key=True, default=new_id, doc="UUID4 string."
    )
    session_id: Mapped[str] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE"), doc="Owning session."
    )
    seq: Mapped[int] = mapped_column(Integer, doc="Position in the session, from 1.")
    role: Mapped[str] = mapped_column(String(STATUS_LENGTH), doc="One of MESSAGE_ROLES.")
    content: Mapped[str] = mapped_column(Text, doc="Message text (user data: never logged).")
    tool_calls: Mapped[list[dict[str, Any]] | None] = mapped_column(
        JSON, nullable=True, doc="Parsed tool calls [{name, arguments}], if any."
    )
    token_start: Mapped[int | None] = mapped_column(
        BigInteger, nullable=True, doc="First token position of the rendered message."
    )
    token_end: Mapped[int | None] = mapped_column(
        BigInteger, nullable=True, doc="One past the last token position."
    )
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, doc="Creation time (UTC)."
    )


class CheckpointRow(Base):
    """One checkpoint blob on disk (safetensors) and what it holds."""

    __tablename__ = "checkpoints"
    __table_args__ = (
        CheckConstraint(_one_of("kind", CHECKPOINT_KINDS), name="kind"),
        Index("ix_checkpoints_session_id_created_at", "session_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(
        String(ID_LENGTH), primary_key=True, default=new_id, doc="UUID4 string."
    )
    session_id: Mapped[str] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE"), doc="Owning session."
    )
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, doc="Creation time (UTC), increasing per session."
    )
    file: Mapped[str] = mapped_column(
        String(PATH_LENGTH), doc="Blob path relative to the checkpoint folder."
    )
    size_bytes: Mapped[int] = mapped_column("bytes", BigInteger, doc="Blob size in bytes.")
    sha256: Mapped[str] = mapped_column(String(64), doc="Hex SHA-256 of the blob.")
    tokens: Mapped[int] = mapped_column(BigInteger, doc="Tokens seen when saved.")
    slots: Mapped[int] = mapped_column(BigInteger, doc="KV slots held when saved.")
    compression_ratio: Mapped[float] = mapped_column(Float, doc="Tokens / slots when saved.")
    fingerprint: Mapped[str] = mapped_column(
        String(FINGERPRINT_LENGTH), doc="Model fingerprint the blob was written with."
    )
    format_version: Mapped[int] = mapped_column(Integer, doc="Checkpoint blob format version.")
    parent_id: Mapped[str | None] = mapped_column(
        ForeignKey("checkpoints.id", ondelete="SET NULL"),
        nullable=True,
        index=True,
        doc="Previous checkpoint (the base of an incremental one).",
    )
    kind: Mapped[str] = mapped_column(
        String(STATUS_LENGTH), default="full", doc="One of CHECKPOINT_KINDS."
    )
    missing: Mapped[bool] = mapped_column(
        Boolean, default=False, doc="The blob was found missing or corrupt on disk."
    )
    label: Mapped[str | None] = mapped_column(
        String(NAME_LENGTH),
        nullable=True,
        doc="Named snapshot (`agentrt sessions tag`): never pruned while it has a label.",
    )


class RunRow(Base):
    """One batch job (`agentrt run task.yaml`)."""

    __tablename__ = "runs"
    __table_args__ = (CheckConstraint(_one_of("status", RUN_STATUSES), name="status"),)

    id: Mapped[str] = mapped_column(
        String(ID_LENGTH), primary_key=True, default=new_id, doc="UUID4 string."
    )
    task_file: Mapped[str] = mapped_column(String(PATH_LENGTH), doc="Path of the task file.")
    task_name: Mapped[str] = mapped_column(String(NAME_LENGTH), doc="Task name.")
    model: Mapped[str] = mapped_column(String(PATH_LENGTH), doc="Model name used by the run.")
    status: Mapped[str] = mapped_column(
        String(STATUS_LENGTH), default="running", doc="One of RUN_STATUSES."
    )
    started_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, doc="Start time (UTC)."
    )
    finished_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True, doc="End time (UTC), if finished."
    )
    options: Mapped[dict[str, Any]] = mapped_column(
        JSON, default=dict, doc="Generation and DMS options of the run."
    )


class RunItemRow(Base):
    """One input of a batch job and its result."""

    __tablename__ = "run_items"
    __table_args__ = (
        UniqueConstraint("run_id", "input_id"),
        CheckConstraint(_one_of("status", RUN_ITEM_STATUSES), name="status"),
    )

    id: Mapped[str] = mapped_column(
        String(ID_LENGTH), primary_key=True, default=new_id, doc="UUID4 string."
    )
    run_id: Mapped[str] = mapped_column(
        ForeignKey("runs.id", ondelete="CASCADE"), doc="Owning run."
    )
    input_id: Mapped[str] = mapped_column(
        String(NAME_LENGTH), doc="Input id from the task file (key of the JSONL output)."
    )
    status: Mapped[str] = mapped_column(
        String(STATUS_LENGTH), default="pending", doc="One of RUN_ITEM_STATUSES."
    )
    output: Mapped[Any | None] = mapped_column(
        JSON, nullable=True, doc="Result written to the JSONL output (user data)."
    )
    error: Mapped[str | None] = mapped_column(Text, nullable=True, doc="Error text, if failed.")
    session_id: Mapped[str | None] = mapped_column(
        ForeignKey("sessions.id", ondelete="SET NULL"),
        nullable=True,
        index=True,
        doc="Session that served the item, if kept.",
    )
    started_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True, doc="Start time (UTC)."
    )
    finished_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True, doc="End time (UTC)."
    )


class PlacementRow(Base):
    """Which engine replica of a cluster holds a session now (scale-out on Ray).

    Keyed by session name, not id: a session is placed before its first checkpoint gives
    it a catalog row. Rows of a replica that died are moved or removed by the router.
    """

    __tablename__ = "placements"

    session_name: Mapped[str] = mapped_column(
        String(NAME_LENGTH), primary_key=True, doc="Session name (unique in the catalog)."
    )
    replica: Mapped[str] = mapped_column(
        String(NAME_LENGTH), index=True, doc="Name of the replica that holds the session."
    )
    node: Mapped[str | None] = mapped_column(
        String(NAME_LENGTH), nullable=True, doc="Ray node id of that replica, if known."
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow, doc="Last change (UTC)."
    )


__all__ = [
    "CHECKPOINT_KINDS",
    "MESSAGE_ROLES",
    "NAMING_CONVENTION",
    "RUN_ITEM_STATUSES",
    "RUN_STATUSES",
    "SESSION_STATUSES",
    "Base",
    "CheckpointRow",
    "MessageRow",
    "PlacementRow",
    "RunItemRow",
    "RunRow",
    "SessionRow",
    "new_id",
    "utcnow",
]
