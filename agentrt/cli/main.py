"""Top-level click group, global options and the single AgentRTError handler."""

from __future__ import annotations

import logging
import sys

import click

from agentrt import __version__
from agentrt.errors import AgentRTError


class AgentRTGroup(click.Group):
    """A click group that turns AgentRTError into a message on stderr and a documented exit code."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        """Run the command; print AgentRTError without a traceback unless -v was given."""
        try:
            return super().invoke(ctx)
        except AgentRTError as err:
            verbose = (ctx.obj or {}).get("verbosity", 0) > 0
            if verbose:
                import traceback

                traceback.print_exc(file=sys.stderr)
            click.secho(f"agentrt: {err.title}: ", fg="red", err=True, nl=False, bold=True)
            click.echo(str(err), err=True)
            ctx.exit(err.exit_code)


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING - 10 * verbosity
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s")


@click.group(cls=AgentRTGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="agentrt")
@click.option("-v", "--verbose", count=True, help="More output (repeat for debug); shows tracebacks.")
@click.option("-q", "--quiet", count=True, help="Less output.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: int) -> None:
    """agentrt: long-lived LLM agent sessions with DMS-compressed, persistent KV caches."""
    ctx.ensure_object(dict)
    ctx.obj["verbosity"] = verbose - quiet
    _setup_logging(verbose - quiet)


def _register() -> None:
    from agentrt.cli import doctor

    cli.add_command(doctor.doctor)


_register()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="agentrt")
