"""`agentrt chat [-m MODEL] [-s SESSION] [--new NAME]`: the terminal UI (textual loads only here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from agentrt.cli.options import (
    db_option,
    device_option,
    home_option,
    kv_budget_option,
    kv_dtype_option,
)


@click.command("chat")
@click.option(
    "-m",
    "--model",
    envvar="AGENTRT_MODEL",
    show_envvar=True,
    metavar="PATH_OR_ID",
    default=None,
    help="Model folder or hub id. Default: AGENTRT_MODEL, else smollm2-135m-instruct (prepared on first use).",
)
@click.option("-s", "--session", default=None, metavar="NAME", help="Open this saved session.")
@click.option("--new", "new", default=None, metavar="NAME", help="Start a new session NAME.")
@click.option("--system", default=None, metavar="TEXT", help="System prompt for new sessions.")
@click.option(
    "--tools/--no-tools", default=False, help="Give new sessions the built-in tools (default off)."
)
@click.option(
    "--workspace",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Folder the file tools may read (default: the current folder).",
)
@click.option(
    "--max-new-tokens",
    type=click.IntRange(min=1),
    default=512,
    show_default=True,
    help="Longest answer per model turn.",
)
@click.option(
    "--temperature",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Sampling temperature (0 = greedy).",
)
@kv_budget_option
@kv_dtype_option
@device_option
@home_option
@db_option
def chat(**kw: Any) -> None:
    """Chat in the terminal with long-lived sessions whose KV cache is saved and resumed."""
    from agentrt.errors import ConfigError

    if kw["session"] and kw["new"]:
        raise ConfigError("give either --session or --new, not both")
    from agentrt.tui.app import make_app
    from agentrt.tui.backend import ChatOptions

    options = ChatOptions(
        model=kw["model"],
        device=kw["device"],
        home=kw["home"],
        db=kw["db"],
        session=kw["session"],
        new=kw["new"],
        system=kw["system"],
        tools=kw["tools"],
        workspace=kw["workspace"],
        kv_budget=kw["kv_budget"],
        kv_dtype=kw["kv_dtype"],
        max_new_tokens=kw["max_new_tokens"],
        temperature=kw["temperature"],
    )
    app = make_app(options)
    app.run()
    err = getattr(app, "load_error", None)
    if err is not None:
        from agentrt.errors import AgentRTError

        if isinstance(err, AgentRTError):
            raise err
        raise click.ClickException(str(err))
