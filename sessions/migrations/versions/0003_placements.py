"""Placements: which engine replica of a Ray cluster holds each session.

Revision ID: 0003_placements
Revises: 0002

Hand-written and frozen, like 0001: it never imports `agentrt.sessions.models`. Runs
unchanged on SQLite and PostgreSQL.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_placements"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the placements table."""
    op.create_table(
        "placements",
        sa.Column("session_name", sa.String(200), nullable=False),
        sa.Column("replica", sa.String(200), nullable=False),
        sa.Column("node", sa.String(200), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("session_name", name=op.f("pk_placements")),
    )
    op.create_index(op.f("ix_placements_replica"), "placements", ["replica"])


def downgrade() -> None:
    """Drop the placements table."""
    op.drop_index(op.f("ix_placements_replica"), table_name="placements")
    op.drop_table("placements")
