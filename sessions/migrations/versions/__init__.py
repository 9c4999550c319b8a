"""Alembic revisions (append-only)."""
