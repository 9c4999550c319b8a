"""`agentrt models ls | pull | rm`: the models agentrt prepares by itself (docs/MODELS.md)."""

from __future__ import annotations

import json
from typing import Any

import click

from agentrt.cli.options import home_option, resolve_settings
from agentrt.cli.sessions_archive import human_bytes


@click.group(short_help="List, prepare and remove the known models.")
def models() -> None:
    """The models agentrt knows by name; the default is smollm2-135m-instruct."""


@models.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
@home_option
@click.pass_context
def ls(ctx: click.Context, as_json: bool, **_: Any) -> None:
    """Each known model: name, folder, size, flavour, DMS window, measured CR, source."""
    from agentrt.models.catalog import model_infos

    infos = model_infos(resolve_settings(ctx).home)
    if as_json:
        click.echo(json.dumps([i.to_dict() for i in infos], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "path", "size", "flavour", "window", "CR", "source")
    table.columns[0].no_wrap = True
    for i in infos:
        table.add_row(
            i.name,
            i.path if i.prepared else f"{i.path} (not prepared)",
            human_bytes(i.bytes) if i.bytes is not None else "-",
            i.flavour,
            str(i.window) if i.window is not None else "-",
            f"{i.measured_cr:.1f}x" if i.measured_cr else "-",
            i.source,
        )
    Console(soft_wrap=False).print(table)


@models.command()
@click.argument("name", required=False)
@home_option
@click.pass_context
def pull(ctx: click.Context, name: str | None, **_: Any) -> None:
    """Prepare model NAME now (default: smollm2-135m-instruct) instead of on first use."""
    from agentrt.models.catalog import model_info
    from agentrt.models.prepare import prepare
    from agentrt.models.registry import DEFAULT_MODEL, known_model

    name = name or DEFAULT_MODEL
    known_model(name)
    home = resolve_settings(ctx).home
    progress = (ctx.obj or {}).get("verbosity", 0) >= 0
    folder = prepare(name, home, progress=progress)
    info = model_info(name, home)
    click.echo(f"{name}: {folder} ({human_bytes(info.bytes or 0)}, {info.flavour})")


@models.command()
@click.argument("name")
@home_option
@click.pass_context
def rm(ctx: click.Context, name: str, **_: Any) -> None:
    """Delete the prepared folder (and cached wheel) of known model NAME."""
    from agentrt.models.prepare import remove
    from agentrt.models.registry import known_model

    known_model(name)
    gone = remove(name, resolve_settings(ctx).home)
    if not gone:
        click.echo(f"{name} is not prepared; nothing to remove")
    for path in gone:
        click.echo(f"removed {path}")
