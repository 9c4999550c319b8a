"""`agentrt db`: inspect and migrate the metadata database."""

from __future__ import annotations

import click

from agentrt.cli.options import db_option, home_option, resolve_settings


@click.group()
def db() -> None:
    """Inspect and migrate the metadata database (schema changes go through Alembic)."""


@db.command()
@home_option
@db_option
@click.pass_context
def upgrade(ctx: click.Context, **_: object) -> None:
    """Apply pending migrations (a SQLite file is backed up first)."""
    from agentrt.sessions.database import database_status
    from agentrt.sessions.database import upgrade as do_upgrade

    settings = resolve_settings(ctx)
    from agentrt.sessions.atomic import ensure_private_dir

    ensure_private_dir(settings.home)
    before = database_status(settings.db_url)
    after = do_upgrade(settings.db_url)
    click.echo(f"{before.url_redacted}: {before.revision or 'empty'} → {after}")


@db.command()
@home_option
@db_option
@click.pass_context
def status(ctx: click.Context, **_: object) -> None:
    """Show the database URL (password hidden), its revision and the newest one."""
    from agentrt.errors import DatabaseError
    from agentrt.sessions.database import database_status

    st = database_status(resolve_settings(ctx).db_url)
    click.echo(f"url:      {st.url_redacted}")
    if not st.reachable:  # its revision is unknown, not "none"
        raise DatabaseError(f"database unreachable: {st.error}")
    click.echo(f"revision: {st.revision or 'none (empty database)'}")
    click.echo(f"head:     {st.head}")
    click.echo("up to date" if st.up_to_date else "behind: run `agentrt db upgrade`")
