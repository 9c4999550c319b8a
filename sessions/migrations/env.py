"""Alembic environment of the agentrt catalog.

Normally run through `agentrt.sessions.database` (`upgrade`, `downgrade`), which builds
the `Config` in code and injects a ready connection as `config.attributes["connection"]`.
Without one it builds an engine from the `sqlalchemy.url` main option. It never prints
or logs the URL (it may hold a password).
"""

from __future__ import annotations

from typing import Any

from alembic import context

from agentrt.errors import DatabaseError
from agentrt.sessions.models import Base

config = context.config
target_metadata = Base.metadata


def _configure(**kwargs: Any) -> None:
    context.configure(
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite ALTERs go through batch (copy-and-move) operations
        transaction_per_migration=True,
        compare_type=True,
        **kwargs,
    )


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise DatabaseError(
            "no database to migrate: neither a connection nor sqlalchemy.url was given",
            hint="run migrations through `agentrt db upgrade`",
        )
    return url


def run_migrations_offline() -> None:
    """Emit the migration SQL for the configured URL's dialect instead of running it."""
    _configure(url=_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations on the injected connection, or on an engine for sqlalchemy.url."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    from agentrt.sessions.database import make_engine

    engine = make_engine(_url())
    try:
        with engine.connect() as conn:
            _configure(connection=conn)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
