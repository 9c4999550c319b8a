"""Alembic migration environment of the agentrt catalog."""
