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
    """Add checkpoints.label."""
    with op.batch_alter_table("checkpoints") as batch:
        batch.add_column(sa.Column("label", sa.String(200), nullable=True))


def downgrade() -> None:
    """Drop checkpoints.label."""
    with op.batch_alter_table("checkpoints") as batch:
        batch.drop_column("label")
