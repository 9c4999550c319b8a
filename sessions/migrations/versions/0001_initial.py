"""Initial catalog: sessions, messages, checkpoints, runs, run_items.

Revision ID: 0001
Revises:

Hand-written and frozen: it never imports `agentrt.sessions.models` (models change, a
revision must not). Constraint names are spelled out in full (`op.f`) so they do not
depend on the naming convention of whichever metadata runs it. Runs unchanged on SQLite
and PostgreSQL; nothing branches on the backend.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _tz() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create every catalog table."""
    op.create_table(
        "sessions",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("model", sa.String(1024), nullable=False),
        sa.Column("model_fingerprint", sa.String(128), nullable=False),
        sa.Column("dms_config", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("slots", sa.BigInteger(), nullable=False),
        sa.Column("kv_bytes", sa.BigInteger(), nullable=False),
        sa.Column("compression_ratio", sa.Float(), nullable=False),
        sa.Column("created_at", _tz(), nullable=False),
        sa.Column("updated_at", _tz(), nullable=False),
        sa.Column("pinned", sa.Boolean(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sessions")),
        sa.UniqueConstraint("name", name=op.f("uq_sessions_name")),
        sa.CheckConstraint(
            "status IN ('active', 'idle', 'saved', 'archived')", name=op.f("ck_sessions_status")
        ),
    )
    op.create_table(
        "messages",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("session_id", sa.String(36), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("tool_calls", sa.JSON(), nullable=True),
        sa.Column("token_start", sa.BigInteger(), nullable=True),
        sa.Column("token_end", sa.BigInteger(), nullable=True),
        sa.Column("created_at", _tz(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_messages")),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name=op.f("fk_messages_session_id_sessions"),
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("session_id", "seq", name=op.f("uq_messages_session_id_seq")),
        sa.CheckConstraint(
            "role IN ('system', 'user', 'assistant', 'tool')", name=op.f("ck_messages_role")
        ),
    )
    op.create_table(
        "checkpoints",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("session_id", sa.String(36), nullable=False),
        sa.Column("created_at", _tz(), nullable=False),
        sa.Column("file", sa.String(1024), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("slots", sa.BigInteger(), nullable=False),
        sa.Column("compression_ratio", sa.Float(), nullable=False),
        sa.Column("fingerprint", sa.String(128), nullable=False),
        sa.Column("format_version", sa.Integer(), nullable=False),
        sa.Column("parent_id", sa.String(36), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("missing", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_checkpoints")),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name=op.f("fk_checkpoints_session_id_sessions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"],
            ["checkpoints.id"],
            name=op.f("fk_checkpoints_parent_id_checkpoints"),
            ondelete="SET NULL",
        ),
        sa.CheckConstraint("kind IN ('full', 'incremental')", name=op.f("ck_checkpoints_kind")),
    )
    op.create_index(
        op.f("ix_checkpoints_session_id_created_at"),
        "checkpoints",
        ["session_id", "created_at"],
    )
    op.create_index(op.f("ix_checkpoints_parent_id"), "checkpoints", ["parent_id"])
    op.create_table(
        "runs",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("task_file", sa.String(1024), nullable=False),
        sa.Column("task_name", sa.String(200), nullable=False),
        sa.Column("model", sa.String(1024), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", _tz(), nullable=False),
        sa.Column("finished_at", _tz(), nullable=True),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
        sa.CheckConstraint(
            "status IN ('running', 'done', 'failed', 'cancelled')", name=op.f("ck_runs_status")
        ),
    )
    op.create_table(
        "run_items",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("input_id", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("output", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("session_id", sa.String(36), nullable=True),
        sa.Column("started_at", _tz(), nullable=True),
        sa.Column("finished_at", _tz(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run_items")),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_run_items_run_id_runs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name=op.f("fk_run_items_session_id_sessions"),
            ondelete="SET NULL",
        ),
        sa.UniqueConstraint("run_id", "input_id", name=op.f("uq_run_items_run_id_input_id")),
        sa.CheckConstraint(
            "status IN ('pending', 'running', 'done', 'failed', 'skipped')",
            name=op.f("ck_run_items_status"),
        ),
    )
    op.create_index(op.f("ix_run_items_session_id"), "run_items", ["session_id"])


def downgrade() -> None:
    """Drop every catalog table (children first)."""
    op.drop_index(op.f("ix_run_items_session_id"), table_name="run_items")
    op.drop_table("run_items")
    op.drop_table("runs")
    op.drop_index(op.f("ix_checkpoints_parent_id"), table_name="checkpoints")
    op.drop_index(op.f("ix_checkpoints_session_id_created_at"), table_name="checkpoints")
    op.drop_table("checkpoints")
    op.drop_table("messages")
    op.drop_table("sessions")
