"""Top-level click group, global options and the single AgentRTError handler."""

from __future__ import annotations

import logging
import sys
import traceback
from typing import Any

import click

from agentrt import __version__
from agentrt.errors import AgentRTError

EXIT_INTERRUPTED = 130

_EPILOG = """\b
Environment (a flag always wins over its variable):
  AGENTRT_HOME    state folder (default ~/.agentrt)
  AGENTRT_DB      SQLAlchemy URL of the metadata database
                  (default sqlite:///$AGENTRT_HOME/agentrt.db)
  AGENTRT_MODEL   default model (known name, folder or hub id;
                  unset: smollm2-135m-instruct, see `agentrt models ls`)
  AGENTRT_DEVICE  auto, cpu, cuda or cuda:N (default auto)

\b
Exit codes: 0 ok, 1 error, 2 configuration or usage error, 3 model,
4 checkpoint, 5 memory budget, 6 task file, 7 tool, 8 session, 9 database,
130 interrupted; see docs/CLI.md.
"""


def report_error(err: AgentRTError, *, verbose: bool) -> None:
    """Print `agentrt: <title>: <message>` and the hint on stderr (traceback first if verbose)."""
    if verbose:
        traceback.print_exception(err, file=sys.stderr)
    click.secho(f"agentrt: {err.title}: ", fg="red", bold=True, err=True, nl=False)
    click.echo(err.message, err=True)
    if err.hint:
        click.echo(f"  hint: {err.hint}", err=True)


class AgentRTGroup(click.Group):
    """A click group that turns AgentRTError into a message on stderr and its documented exit code.

    Any other exception propagates unchanged, so bugs keep their traceback.
    """

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; print AgentRTError without a traceback unless -v was given."""
        try:
            return super().invoke(ctx)
        except AgentRTError as err:
            report_error(err, verbose=(ctx.obj or {}).get("verbosity", 0) > 0)
            ctx.exit(err.exit_code)
        except KeyboardInterrupt:
            click.echo("\nagentrt: interrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)


def _setup_logging(verbosity: int) -> None:
    """Send log records to stderr at WARNING, INFO with -v, DEBUG with -vv, ERROR with -q."""
    level = max(logging.WARNING - 10 * verbosity, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


@click.group(
    cls=AgentRTGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=_EPILOG,
)
@click.version_option(__version__, "--version", prog_name="agentrt")
@click.option(
    "-v", "--verbose", count=True, help="More output (repeat for debug); shows tracebacks."
)
@click.option("-q", "--quiet", count=True, help="Less output.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: int) -> None:
    """agentrt: long-lived LLM agent sessions with DMS-compressed, persistent KV caches."""
    ctx.ensure_object(dict)
    ctx.obj["verbosity"] = verbose - quiet
    _setup_logging(verbose - quiet)


def _register() -> None:
    """Attach the command modules to the group (each imports its heavy dependencies lazily)."""
    from agentrt.cli import bench, db, doctor, retrofit

    cli.add_command(doctor.doctor)
    cli.add_command(db.db)
    cli.add_command(bench.bench)
    from agentrt.cli import resume, sessions

    cli.add_command(sessions.sessions)
    cli.add_command(resume.resume)
    cli.add_command(retrofit.retrofit)
    from agentrt.cli import eval as eval_command

    cli.add_command(eval_command.eval_cmd)
    from agentrt.cli import models

    cli.add_command(models.models)
    from agentrt.cli import run

    cli.add_command(run.run_cmd)
    from agentrt.cli import chat

    cli.add_command(chat.chat)
    from agentrt.cli import serve

    cli.add_command(serve.serve)


_register()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="agentrt")
