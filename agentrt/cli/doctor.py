"""`agentrt doctor`: report the environment and whether agentrt is usable here."""

from __future__ import annotations

import click


@click.command()
def doctor() -> None:
    """Check Python, torch, triton, transformers, home, database and the demo model."""
    click.echo("doctor: not yet implemented")
