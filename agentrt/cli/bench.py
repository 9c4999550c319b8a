"""`agentrt bench`: speed and memory benchmarks (JSON + table + PNG), never timed unit tests."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from agentrt.cli.options import device_option, dms_option, model_option, resolve_settings


def _parse_ints(text: str, *, minimum: int | None = None) -> tuple[int, ...]:
    """A comma-separated list of integers (each >= `minimum`), else a usage error (exit 2)."""
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as err:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of integers") from err
    if not values:
        raise click.BadParameter(f"{text!r} names no value; give at least one integer")
    if minimum is not None and any(v < minimum for v in values):
        bad = ", ".join(str(v) for v in values if v < minimum)
        raise click.BadParameter(f"{bad} in {text!r}: every value must be at least {minimum}")
    return values


@click.group()
def bench() -> None:
    """Benchmarks: memory, prefill, decode, resume, multiturn, throughput, kernels (GPU)."""


def _add_suites() -> None:
    from agentrt.cli.bench_suites import SUITES

    for command in SUITES:
        bench.add_command(command)


_add_suites()


@bench.command()
@model_option
@dms_option
@device_option
@click.option(
    "--concurrency", default="1,8,32", show_default=True, help="Concurrent sessions to test."
)
@click.option("--prompt-len", default=128, show_default=True, help="Prompt tokens per session.")
@click.option("--new-tokens", default=32, show_default=True, help="Decode tokens per session.")
@click.option(
    "--kv-budget",
    default="4GiB",
    show_default=True,
    envvar="AGENTRT_KV_BUDGET",
    help="KV pool size.",
)
@click.option("--no-hf", is_flag=True, help="Skip the HF generate baseline.")
@click.option("--repeats", default=5, show_default=True, type=click.IntRange(min=1))
@click.option("--warmup", default=1, show_default=True, type=click.IntRange(min=0))
@click.option(
    "--out", type=click.Path(path_type=Path), default=Path("bench-out"), show_default=True
)
@click.pass_context
def throughput(
    ctx: click.Context,
    concurrency: str,
    prompt_len: int,
    new_tokens: int,
    kv_budget: str,
    no_hf: bool,
    repeats: int,
    warmup: int,
    out: Path,
    dms_mode: str,
    **_: object,
) -> None:
    """Decode tokens/s with N concurrent sessions vs HF generate on the same model."""
    from agentrt.bench.throughput import format_table, plot, run_throughput_bench
    from agentrt.engine import resolve_device
    from agentrt.engine.limits import check_kv_budget
    from agentrt.models.resolve import load_resolved

    levels = _parse_ints(concurrency, minimum=1)
    settings = resolve_settings(ctx)
    device = resolve_device(settings.device)
    check_kv_budget(kv_budget, device)  # before the model is read
    model = load_resolved(
        settings.model,
        dms=dms_mode,
        device=device,
        home=settings.home,
        progress=(ctx.obj or {}).get("verbosity", 0) >= 0,
    )
    result = run_throughput_bench(
        model,
        concurrency=levels,
        prompt_len=prompt_len,
        new_tokens=new_tokens,
        kv_budget=kv_budget,
        hf_baseline=not no_hf,
        repeats=repeats,
        warmup=warmup,
    )
    result["command"] = " ".join(["agentrt", *sys.argv[1:]])
    out.mkdir(parents=True, exist_ok=True)
    (out / "throughput.json").write_text(json.dumps(result, indent=2))
    plot(result, out / "throughput.png")
    click.echo(format_table(result))
    click.echo(f"wrote {out / 'throughput.json'} and {out / 'throughput.png'}")


@bench.command()
@click.option("--batches", default="1,8,32", show_default=True)
@click.option("--contexts", default="4096,32768,131072", show_default=True)
@click.option(
    "--crs", default="1,4,8", show_default=True, help="Compression ratios (slots = tokens / CR)."
)
@click.option(
    "--out", type=click.Path(path_type=Path), default=Path("bench-out"), show_default=True
)
def kernels(batches: str, contexts: str, crs: str, out: Path) -> None:
    """Paged DMS decode/prefill attention vs dense SDPA at Llama-3.1-8B shapes (needs CUDA)."""
    import torch

    from agentrt.errors import ConfigError

    if not torch.cuda.is_available():
        raise ConfigError(
            "the kernel benchmark needs a CUDA GPU (speed under the Triton interpreter means nothing)",
            hint="run it on a GPU machine; correctness tests run on CPU with TRITON_INTERPRET=1",
        )
    from agentrt.bench.kernel_bench import format_table, run_kernel_bench

    result = run_kernel_bench(
        batches=_parse_ints(batches, minimum=1),
        contexts=_parse_ints(contexts, minimum=1),
        crs=tuple(float(c) for c in crs.split(",")),
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "kernels.json").write_text(json.dumps(result, indent=2))
    click.echo(format_table(result))
    click.echo(f"wrote {out / 'kernels.json'}")


@bench.command("server")
@model_option
@dms_option
@device_option
@click.option(
    "--turns", default=50, show_default=True, type=click.IntRange(min=1), help="Conversation turns."
)
@click.option(
    "--max-tokens",
    default=16,
    show_default=True,
    type=click.IntRange(min=1),
    help="Answer tokens per turn.",
)
@click.option(
    "--kv-budget",
    default="1GiB",
    show_default=True,
    envvar="AGENTRT_KV_BUDGET",
    help="KV pool size.",
)
@click.option(
    "--out", type=click.Path(path_type=Path), default=Path("bench-out"), show_default=True
)
@click.pass_context
def server(
    ctx: click.Context,
    turns: int,
    max_tokens: int,
    kv_budget: str,
    out: Path,
    dms_mode: str,
    **_: object,
) -> None:
    """Turn latency of a long conversation through `agentrt serve`: sessions vs re-sent history."""
    import tempfile

    from agentrt.bench.server_bench import format_table, run_server_bench
    from agentrt.engine import Engine, resolve_device
    from agentrt.models.resolve import load_resolved

    settings = resolve_settings(ctx)
    model = load_resolved(
        settings.model,
        dms=dms_mode,
        device=resolve_device(settings.device),
        home=settings.home,
        progress=(ctx.obj or {}).get("verbosity", 0) >= 0,
    )
    with tempfile.TemporaryDirectory(prefix="agentrt-bench-server-") as home:

        def make() -> Engine:
            return Engine(model, kv_budget=kv_budget, home=home, db=f"sqlite:///{home}/bench.db")

        result = run_server_bench(make, turns=turns, max_tokens=max_tokens)
    result["command"] = "agentrt " + " ".join(sys.argv[1:])
    out.mkdir(parents=True, exist_ok=True)
    (out / "server.json").write_text(json.dumps(result, indent=2))
    click.echo(format_table(result))
    click.echo(f"wrote {out / 'server.json'}")


@bench.command("soak")
@model_option
@device_option
@click.option("--sessions", default=8, show_default=True, help="Sessions in play at once.")
@click.option("--minutes", default=1.0, show_default=True, help="How long to drive them.")
@click.option(
    "--num-blocks",
    type=int,
    default=None,
    help="KV pool size in blocks (default: room for about two sessions at their longest).",
)
@click.option(
    "--max-session-tokens",
    default=2000,
    show_default=True,
    help="A session this long is closed and a new one takes its place.",
)
@click.option("--save-every", default=1, show_default=True, help="Turns between saves.")
@click.option("--restarts", default=2, show_default=True, help="Engine restarts over the run.")
@click.option(
    "--close-prob", default=0.15, show_default=True, help="Chance a session closes after a save."
)
@click.option("--keep", default=3, show_default=True, help="Restore points kept per session.")
@click.option(
    "--min-turns", default=0, show_default=True, help="Run past --minutes until this many turns."
)
@click.option(
    "--default-model",
    "use_default",
    is_flag=True,
    help="Soak the default (or --model) model instead of a tiny random one.",
)
@click.option("--no-replay", is_flag=True, help="Skip the replay on an unlimited pool.")
@click.option(
    "--out", type=click.Path(path_type=Path), default=Path("bench-out"), show_default=True
)
@click.pass_context
def soak(ctx: click.Context, use_default: bool, no_replay: bool, out: Path, **opts: object) -> None:
    """Drive sessions through swaps, saves, closes, reopens and restarts; check nothing is lost
    or leaked (exit 1 if something is)."""
    from agentrt.bench.soak import (
        SoakConfig,
        format_table,
        plot,
        progress_bar,
        run_soak,
        tiny_model_dir,
    )
    from agentrt.engine import resolve_device
    from agentrt.models.resolve import load_resolved

    settings = resolve_settings(ctx)
    device = resolve_device(settings.device)
    out.mkdir(parents=True, exist_ok=True)
    spec = settings.model if use_default else tiny_model_dir(out / "soak-tiny-model")
    model = load_resolved(spec, device=device, home=settings.home, progress=use_default)
    keys = (
        "sessions",
        "minutes",
        "num_blocks",
        "save_every",
        "restarts",
        "close_prob",
        "keep",
        "max_session_tokens",
        "min_turns",
    )
    cfg = SoakConfig(**{k: opts[k] for k in keys}, replay=not no_replay)  # type: ignore[arg-type]
    with progress_bar(cfg.minutes) as tick:
        result = run_soak(model, cfg, out, progress=tick)
    result["command"] = " ".join(["agentrt", *sys.argv[1:]])
    (out / "soak.json").write_text(json.dumps(result, indent=2))
    plot(result, out / "soak.png")
    click.echo(format_table(result))
    click.echo(f"wrote {out / 'soak.json'} and {out / 'soak.png'}")
    if not result["ok"]:
        ctx.exit(1)


from agentrt.cli.bench_hyper import hyper  # noqa: E402 - registered last, kept in its own module

bench.add_command(hyper)
