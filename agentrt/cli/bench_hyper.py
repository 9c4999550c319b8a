"""`agentrt bench hyper`: majority-of-N DMS chains vs one dense chain at equal KV bytes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from agentrt.cli.options import device_option, model_option, resolve_settings


def chain_counts(text: str) -> tuple[int, ...]:
    """ "1,2,4,8" as chain counts (each at least 1), else a usage error (exit 2)."""
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as err:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of integers") from err
    if not values or min(values) < 1:
        raise click.BadParameter(f"{text!r}: give chain counts of at least 1, e.g. 1,2,4,8")
    return values


@click.command("hyper")
@model_option
@device_option
@click.option(
    "--adapters",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="DMS adapter folder (adapters.safetensors + dms_config.json) for a plain model.",
)
@click.option("--problems", default=12, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--ns",
    default="1,2,4,8",
    show_default=True,
    callback=lambda _ctx, _p, text: chain_counts(text),
    help="Chain counts N to compare (comma-separated).",
)
@click.option("--examples", default=50, show_default=True, type=click.IntRange(min=0),
              help="Worked examples in the shared prefix.")  # fmt: skip
@click.option("--max-operand", default=9, show_default=True, type=click.IntRange(min=1),
              help="Sums a + b use 1 <= a, b <= this.")  # fmt: skip
@click.option("--max-new-tokens", default=4, show_default=True, type=click.IntRange(min=1))
@click.option("--temperature", default=0.8, show_default=True, type=click.FloatRange(min=0))
@click.option("--seed", default=0, show_default=True)
@click.option("--kv-budget", default="256MiB", show_default=True, help="KV pool size per engine.")
@click.option(
    "--out", type=click.Path(path_type=Path), default=Path("bench-out"), show_default=True
)
@click.pass_context
def hyper(
    ctx: click.Context,
    adapters: Path | None,
    problems: int,
    ns: tuple[int, ...],
    examples: int,
    max_operand: int,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    kv_budget: str,
    out: Path,
    **_: object,
) -> None:
    """Accuracy of majority-of-N DMS chains vs one dense chain, with the KV bytes each holds."""
    from agentrt.bench.hyper import format_table, plot, run_hyper_bench
    from agentrt.dms import load_model
    from agentrt.engine import resolve_device
    from agentrt.engine.limits import check_kv_budget
    from agentrt.models.resolve import load_resolved, resolve

    settings = resolve_settings(ctx)
    device = resolve_device(settings.device)
    check_kv_budget(kv_budget, device)  # before the model is read
    progress = (ctx.obj or {}).get("verbosity", 0) >= 0
    if adapters is not None:
        path = resolve(settings.model, settings.home, progress=progress).path
        model = load_model(path, adapters=adapters, device=device)
    else:
        model = load_resolved(settings.model, device=device, home=settings.home, progress=progress)
    result = run_hyper_bench(
        model,
        problems=problems,
        ns=ns,
        examples=examples,
        max_operand=max_operand,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        kv_budget=kv_budget,
        progress=progress,
    )
    result["command"] = " ".join(["agentrt", *sys.argv[1:]])
    result["adapters"] = str(adapters) if adapters is not None else None
    out.mkdir(parents=True, exist_ok=True)
    (out / "hyper.json").write_text(json.dumps(result, indent=2))
    plot(result, out / "hyper.png")
    click.echo(format_table(result))
    click.echo(f"wrote {out / 'hyper.json'} and {out / 'hyper.png'}")
