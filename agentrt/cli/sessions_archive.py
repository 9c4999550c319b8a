"""`agentrt sessions export` and `import`: parse options, call `agentrt.sessions.archive`, print.

Also the small formatting and catalog helpers the session commands share. Heavy packages
(SQLAlchemy, torch) are imported inside functions only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from agentrt.cli.options import db_option, home_option, resolve_settings
from agentrt.dms.budget import format_bytes
from agentrt.errors import ConfigError

if TYPE_CHECKING:
    from agentrt.sessions.layout import SessionLayout
    from agentrt.sessions.store import SessionStore
    from agentrt.settings import Settings


def human_bytes(n: int) -> str:
    """`n` bytes as B, KiB, MiB, GiB or TiB with one decimal."""
    return format_bytes(n, digits=1)


def count(n: int, noun: str) -> str:
    """`1 checkpoint`, `2 checkpoints`."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def layout_of(settings: Settings) -> SessionLayout:
    """Where `settings` keep checkpoint blobs."""
    from agentrt.sessions.layout import SessionLayout

    return SessionLayout(home=settings.home, checkpoint_dir=settings.checkpoint_dir)


@contextmanager
def catalog(settings: Settings, *, readonly: bool = False) -> Iterator[SessionStore | None]:
    """The session store of `settings` (see `agentrt.sessions.catalog.catalog`)."""
    from agentrt.sessions.catalog import catalog as open_catalog

    with open_catalog(layout_of(settings), settings.db_url, readonly=readonly) as store:
        yield store


@click.command("export")
@click.argument("name")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--latest", is_flag=True, help="Only the newest checkpoint, not all of them.")
@click.option("--force", is_flag=True, help="Overwrite FILE if it exists.")
@home_option
@db_option
@click.pass_context
def export(ctx: click.Context, name: str, file: Path, latest: bool, force: bool, **_: Any) -> None:
    """Write session NAME (row, messages, checkpoints) to one tar.gz archive FILE (mode 0600)."""
    from agentrt import __version__
    from agentrt.sessions.archive import export_archive
    from agentrt.sessions.catalog import require_store

    settings = resolve_settings(ctx)
    if file.exists() and not force:
        raise ConfigError(f"{file} already exists", hint="pass --force to overwrite it")
    with catalog(settings, readonly=True) as store:
        done = export_archive(
            require_store(store, name),
            layout_of(settings),
            name,
            file,
            latest=latest,
            agentrt_version=__version__,
        )
    click.echo(
        f"exported session {done.info.name!r}: {count(done.messages, 'message')}, "
        f"{count(done.checkpoints, 'checkpoint')} → {file} ({human_bytes(done.size_bytes)})"
    )


@click.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--as", "as_name", metavar="NEW", help="Import under this name instead.")
@home_option
@db_option
@click.pass_context
def import_session(ctx: click.Context, file: Path, as_name: str | None, **_: Any) -> None:
    """Import a session archive written by `agentrt sessions export` (verified first)."""
    from agentrt.sessions.archive import create_copy, prepare_import

    settings = resolve_settings(ctx)
    with catalog(settings, readonly=True) as store:
        copy = prepare_import(file, as_name, store)
    with catalog(settings) as store:
        assert store is not None
        info = create_copy(store, layout_of(settings), copy)
    click.echo(
        f"imported session {info.name!r} ({info.id[:8]}): "
        f"{count(len(copy.messages), 'message')}, {count(len(copy.checkpoints), 'checkpoint')}"
    )
