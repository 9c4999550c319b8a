"""`agentrt sessions tag` / `untag`: named snapshots that automatic retention never prunes."""

from __future__ import annotations

from typing import Any

import click

from agentrt.cli.options import db_option, home_option, resolve_settings
from agentrt.cli.sessions_archive import catalog
from agentrt.errors import CheckpointError, SessionError


@click.command("tag")
@click.argument("name")
@click.argument("label")
@click.option(
    "--checkpoint",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Tag the N-th checkpoint (1 = oldest, as `agentrt sessions show` numbers them); "
    "default: the newest.",
)
@home_option
@db_option
@click.pass_context
def tag(ctx: click.Context, name: str, label: str, checkpoint: int | None, **_: Any) -> None:
    """Name a checkpoint of session NAME as snapshot LABEL; it is kept until untagged."""
    from agentrt.sessions.catalog import require_store

    settings = resolve_settings(ctx)
    with catalog(settings, readonly=True) as store:
        store = require_store(store, name)
        rows = store.checkpoints(name)
        if not rows:
            raise CheckpointError(f"session {name!r} has no checkpoint to tag")
        if checkpoint is not None and checkpoint > len(rows):
            raise CheckpointError(
                f"session {name!r} has checkpoints 1 to {len(rows)}, not {checkpoint}",
                hint=f"list them with `agentrt sessions show {name}`",
            )
        row = rows[(checkpoint or len(rows)) - 1]
        store.label_checkpoint(row.id, label)
    number = checkpoint or len(rows)
    click.echo(
        f"tagged checkpoint {number} ({row.id[:8]}, {row.tokens} tokens) of {name!r} as "
        f"{label!r}: kept, with the checkpoints it needs, until `agentrt sessions untag "
        f"{name} {label}`"
    )


@click.command("untag")
@click.argument("name")
@click.argument("label")
@home_option
@db_option
@click.pass_context
def untag(ctx: click.Context, name: str, label: str, **_: Any) -> None:
    """Remove snapshot LABEL of session NAME; retention may then prune its checkpoint."""
    from agentrt.sessions.catalog import require_store

    settings = resolve_settings(ctx)
    with catalog(settings, readonly=True) as store:
        store = require_store(store, name)
        rows = [c for c in store.checkpoints(name) if c.label == label]
        if not rows:
            labels = sorted({c.label for c in store.checkpoints(name) if c.label})
            raise SessionError(
                f"session {name!r} has no snapshot named {label!r}",
                hint=f"its snapshots: {', '.join(labels)}" if labels else "it has no snapshots",
            )
        store.label_checkpoint(rows[0].id, None)
    click.echo(f"untagged {label!r} of {name!r}; the next save or `gc --keep N` may prune it")


__all__ = ["tag", "untag"]
