"""`agentrt run TASK.yaml [--resume] [--set key=value ...]`: a task file through the agent loop."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from agentrt.cli.main import EXIT_INTERRUPTED
from agentrt.cli.options import ray_options

if TYPE_CHECKING:
    from agentrt.agent.task import TaskSpec


@click.command("run")
@click.argument("task_file", type=click.Path(dir_okay=False, path_type=str))
@click.option("--resume", is_flag=True, help="Skip finished inputs and continue the saved session.")
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a task file key (dotted), e.g. --set generation.max_new_tokens=64.",
)
@click.option(
    "--device",
    default=None,
    metavar="DEVICE",
    help="auto, cpu, cuda or cuda:N (overrides the task file).",
)
@click.option("--check", is_flag=True, help="Only validate the task file (no model is loaded).")
@ray_options
@click.pass_context
def run_cmd(
    ctx: click.Context,
    task_file: str,
    resume: bool,
    sets: tuple[str, ...],
    device: str | None,
    check: bool,
    ray_address: str | None,
    replicas: int,
) -> None:
    """Run the inputs of TASK_FILE through the agent loop; one JSONL record per input."""
    from agentrt.agent.task import load_task

    spec = load_task(task_file, list(sets))  # every problem reported before any model work
    quiet = (ctx.obj or {}).get("verbosity", 0) < 0
    if check:
        click.echo(f"{task_file}: ok ({len(spec.inputs)} inputs, output {spec.output})")
        return
    if ray_address is not None:
        if _run_on_ray(spec, resume=resume, device=device, address=ray_address, replicas=replicas):
            ctx.exit(1)
        return
    from agentrt.agent.display import NullDisplay, RichDisplay
    from agentrt.agent.runner import TaskRunner, open_engine, open_store

    store = open_store()
    engine = open_engine(spec, device=device)
    try:
        runner = TaskRunner(
            spec, engine, store, resume=resume, display=NullDisplay() if quiet else RichDisplay()
        )
        summary = runner.run()
    finally:
        engine.close()
        store.close()
    done = len(summary.records) - len(summary.failed)
    click.echo(
        f"run {summary.run_id}: {done} done, {len(summary.failed)} failed, "
        f"{len(summary.skipped)} skipped; results in {spec.output}; "
        f"session {', '.join(summary.sessions) or '-'}",
        err=True,
    )
    if summary.interrupted:
        click.echo("interrupted: the session is checkpointed; continue with --resume", err=True)
        ctx.exit(EXIT_INTERRUPTED)
    if summary.failed:
        ctx.exit(1)


def _run_on_ray(
    spec: TaskSpec, *, resume: bool, device: str | None, address: str, replicas: int
) -> bool:
    """The independent inputs of `spec` spread over `replicas` Ray actors; True if any failed."""
    from agentrt.cluster.batch import check_spreadable, run_on_ray
    from agentrt.settings import load_settings

    check_spreadable(spec, resume=resume)
    settings = load_settings()
    results = run_on_ray(
        spec,
        replicas=replicas,
        address=address,
        home=str(settings.home),
        db=settings.db_url,
        device=device,
    )
    failed = [i for r in results for i in r.failed]
    done = sum(len(r.records) for r in results) - len(failed)
    click.echo(
        f"runs {', '.join(r.run_id for r in results)} on {len(results)} replicas: {done} done, "
        f"{len(failed)} failed; results in {spec.output}",
        err=True,
    )
    return bool(failed)
