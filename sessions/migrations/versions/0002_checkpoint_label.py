"""Checkpoint labels: named snapshots that retention never prunes.

Revision ID: 0002
Revises: 0001

Hand-written and frozen (see 0001). Adds the nullable `checkpoints.label` column; existing
checkpoints have no label.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add checkpoints.label (plain ADD COLUMN: SQLite and PostgreSQL both support it)."""
    op.add_column("checkpoints", sa.Column("label", sa.String(200), nullable=True))


def downgrade() -> None:
    """Drop checkpoints.label (SQLite 3.35+ and PostgreSQL support DROP COLUMN)."""
    op.drop_column("checkpoints", "label")
