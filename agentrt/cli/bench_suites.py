"""`agentrt bench memory|prefill|decode|resume|multiturn`: the suites behind the README's numbers.

Each writes `<suite>.json` (numbers, machine, versions, command), `<suite>.md` and
`<suite>.png` into --out. Parsing and printing only; the measuring lives in agentrt.bench.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from agentrt.cli.options import device_option, kv_dtype_option, model_option, resolve_settings


def _ints(text: str) -> tuple[int, ...]:
    """'1,8,32' → (1, 8, 32); every value >= 1, else a usage error."""
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as err:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of integers") from err
    if not values or min(values) < 1:
        raise click.BadParameter(f"{text!r}: give positive integers, e.g. 1024,4096")
    return values


def command_line(ctx: click.Context) -> str:
    """The command as typed: `agentrt bench SUITE` plus every option given on the command line."""
    from click.core import ParameterSource

    words = ["agentrt", *ctx.command_path.split()[1:]]
    for param in ctx.command.params:
        if ctx.get_parameter_source(param.name) is not ParameterSource.COMMANDLINE:
            continue
        flag, value = param.opts[0], ctx.params[param.name]
        if isinstance(value, bool):
            words += [flag] if value else []
        else:
            words += [flag, shlex.quote(str(value))]
    return " ".join(words)


def suite_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--model, --device, --adapters, --kv-budget, --kv-dtype, --out shared by every suite."""
    for option in (
        kv_dtype_option,
        click.option(
            "--out",
            type=click.Path(path_type=Path),
            default=Path("bench-out"),
            show_default=True,
            help="Folder for <suite>.json, .md and .png.",
        ),
        click.option(
            "--kv-budget", default="2GiB", show_default=True, help="KV pool size per engine."
        ),
        click.option(
            "--adapters",
            type=click.Path(exists=True, file_okay=False, path_type=Path),
            default=None,
            help="DMS adapter folder for the DMS side (default: the model's own/shipped DMS).",
        ),
        device_option,
        model_option,
    ):
        func = option(func)
    return func


def repeat_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--repeats and --warmup for suites that time interleaved variants."""
    func = click.option("--warmup", default=1, show_default=True, type=click.IntRange(min=0))(func)
    return click.option(
        "--repeats", default=5, show_default=True, type=click.IntRange(min=1), help="Timed rounds."
    )(func)


def _run(
    ctx: click.Context,
    adapters: Path | None,
    out: Path,
    run: Callable[[Any, Callable[[str], None]], dict[str, Any]],
    table: Callable[[dict[str, Any]], str],
    plot: Callable[[dict[str, Any], Path], Any],
) -> None:
    """Load the models, run the suite, write JSON + Markdown + PNG, print the table."""
    from agentrt.bench.method import machine
    from agentrt.bench.report import write_suite
    from agentrt.bench.workload import load_models
    from agentrt.engine import resolve_device

    settings = resolve_settings(ctx)
    device = resolve_device(settings.device)
    quiet = (ctx.obj or {}).get("verbosity", 0) < 0
    models = load_models(
        settings.model, device=device, adapters=adapters, home=settings.home, progress=not quiet
    )

    def progress(msg: str) -> None:
        if not quiet:
            click.echo(msg, err=True)

    result = run(models, progress)
    result.update(
        model=models.path or str(settings.model),
        models=models.describe(),
        machine=machine(device),
        command=command_line(ctx),
    )
    paths = write_suite(result, out, table(result))
    paths.append(plot(result, out / f"{result['suite']}.png"))
    click.echo(table(result))
    click.echo("wrote " + ", ".join(str(p) for p in paths))


@click.command()
@suite_options
@click.option(
    "--contexts",
    default=None,
    help="Context lengths (default CPU 1024,4096,8192; GPU 4096,32768,131072).",
)
@click.option("--budget", default="8GiB", show_default=True, help="Budget the sessions must fit.")
@click.pass_context
def memory(ctx, contexts, budget, adapters, kv_budget, kv_dtype, out, **_) -> None:  # noqa: ANN001
    """KV bytes per session and sessions that fit a budget, DMS vs dense."""
    from agentrt.bench.memory import (
        CPU_CONTEXTS,
        GPU_CONTEXTS,
        memory_plot,
        memory_table,
        run_memory,
    )
    from agentrt.dms.budget import parse_bytes

    def run(models: Any, progress: Callable[[str], None]) -> dict[str, Any]:
        default = GPU_CONTEXTS if models.dense.device.type == "cuda" else CPU_CONTEXTS
        lengths = _ints(contexts) if contexts else default
        return run_memory(
            models,
            contexts=lengths,
            budget=parse_bytes(budget),
            kv_budget=kv_budget,
            kv_dtype=kv_dtype,
            progress=progress,
        )

    _run(ctx, adapters, out, run, memory_table, memory_plot)


@click.command()
@suite_options
@repeat_options
@click.option("--lengths", default="2048,8192", show_default=True, help="Prompt lengths.")
@click.pass_context
def prefill(ctx, lengths, repeats, warmup, adapters, kv_budget, kv_dtype, out, **_) -> None:  # noqa: ANN001
    """Prefill tokens/s, DMS vs the same engine dense vs HF forward."""
    from agentrt.bench.prefill import prefill_plot, prefill_table, run_prefill

    sizes = _ints(lengths)

    def run(models: Any, progress: Callable[[str], None]) -> dict[str, Any]:
        return run_prefill(
            models,
            lengths=sizes,
            repeats=repeats,
            warmup=warmup,
            kv_budget=kv_budget,
            kv_dtype=kv_dtype,
            progress=progress,
        )

    _run(ctx, adapters, out, run, prefill_table, prefill_plot)


@click.command()
@suite_options
@repeat_options
@click.option("--sessions", default="1,8,32", show_default=True, help="Concurrent sessions.")
@click.option("--context", default=1024, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--steps",
    default=16,
    show_default=True,
    type=click.IntRange(min=1),
    help="Decode steps per round.",
)
@click.option("--no-hf", is_flag=True, help="Skip the HF generate baseline.")
@click.pass_context
def decode(
    ctx, sessions, context, steps, no_hf, repeats, warmup, adapters, kv_budget, kv_dtype, out, **_
) -> None:  # noqa: ANN001
    """Decode tokens/s with N sessions, DMS vs the same engine dense vs HF generate."""
    from agentrt.bench.decode import decode_plot, decode_table, run_decode

    levels = _ints(sessions)

    def run(models: Any, progress: Callable[[str], None]) -> dict[str, Any]:
        return run_decode(
            models,
            sessions=levels,
            context=context,
            steps=steps,
            repeats=repeats,
            warmup=warmup,
            kv_budget=kv_budget,
            kv_dtype=kv_dtype,
            hf=not no_hf,
            progress=progress,
        )

    _run(ctx, adapters, out, run, decode_table, decode_plot)


@click.command()
@suite_options
@repeat_options
@click.option("--lengths", default="1024,4096,8192", show_default=True, help="Session lengths.")
@click.option("--no-new-process", is_flag=True, help="Skip the fresh-process restore.")
@click.pass_context
def resume(
    ctx, lengths, no_new_process, repeats, warmup, adapters, kv_budget, kv_dtype, out, **_
) -> None:  # noqa: ANN001
    """Time to get a saved session back (disk, new process, CPU memory) vs re-prefilling it."""
    from agentrt.bench.resume import resume_plot, resume_table, run_resume

    sizes = _ints(lengths)

    def run(models: Any, progress: Callable[[str], None]) -> dict[str, Any]:
        return run_resume(
            models,
            lengths=sizes,
            repeats=repeats,
            warmup=warmup,
            kv_budget=kv_budget,
            kv_dtype=kv_dtype,
            new_process=not no_new_process,
            progress=progress,
        )

    _run(ctx, adapters, out, run, resume_table, resume_plot)


@click.command()
@suite_options
@click.option("--turns", default=50, show_default=True, type=click.IntRange(min=1))
@click.option("--user-tokens", default=48, show_default=True, type=click.IntRange(min=1))
@click.option("--answer-tokens", default=16, show_default=True, type=click.IntRange(min=1))
@click.pass_context
def multiturn(
    ctx, turns, user_tokens, answer_tokens, adapters, kv_budget, kv_dtype, out, **_
) -> None:  # noqa: ANN001
    """An N-turn conversation: agentrt session vs re-sent history vs a kept HF dense cache."""
    from agentrt.bench.multiturn import multiturn_plot, multiturn_table, run_multiturn

    def run(models: Any, progress: Callable[[str], None]) -> dict[str, Any]:
        return run_multiturn(
            models,
            turns=turns,
            user_tokens=user_tokens,
            answer_tokens=answer_tokens,
            kv_budget=kv_budget,
            kv_dtype=kv_dtype,
            progress=progress,
        )

    _run(ctx, adapters, out, run, multiturn_table, multiturn_plot)


SUITES = (memory, prefill, decode, resume, multiturn)
