"""`agentrt eval`: accuracy vs KV compression on the synthetic task suite, and --text perplexity/KL.

Options are validated before the model loads; torch and transformers are imported only
when the command runs. See docs/EVAL.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from click.core import ParameterSource

from agentrt.cli.options import device_option, dms_option, model_option, resolve_settings


@click.command("eval", short_help="Accuracy vs KV compression: DMS and the cache baselines.")
@model_option
@dms_option
@device_option
@click.option("--tasks", default="niah,vt,arith,agent", show_default=True, help="Tasks to run.")
@click.option(
    "--lengths", default="1k,4k", show_default=True, help="Prompt lengths in tokens (k = 1024)."
)
@click.option(
    "--policies",
    default="dense,dms,window,streaming,tova,h2o",
    show_default=True,
    help="Cache policies (dms = the model's own decisions).",
)
@click.option(
    "--cr",
    "crs",
    default="2,4,8",
    show_default=True,
    help="Compression ratios for the baselines; dms adds the ratio DMS achieved on each task "
    "and length (DMS runs first).",
)
@click.option("--n", "n_items", default=20, show_default=True, help="Items per task and length.")
@click.option("--seed", default=0, show_default=True, help="Seed of the items (held-out split).")
@click.option("--max-new-tokens", default=64, show_default=True, help="Tokens per reply.")
@click.option("--batch-size", default=8, show_default=True, help="Items served together.")
@click.option(
    "--chunk",
    default=512,
    show_default=True,
    help="Prefill chunk (tokens per step); TOVA/H2O evict once per chunk.",
)
@click.option(
    "--text",
    "text_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Also (or, without --tasks, only) score this text: perplexity and KL to dense.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("eval-out"),
    show_default=True,
    help="Folder for eval.json, eval.txt and the PNG plots.",
)
@click.pass_context
def eval_cmd(
    ctx: click.Context,
    tasks: str,
    lengths: str,
    policies: str,
    crs: str,
    n_items: int,
    seed: int,
    max_new_tokens: int,
    batch_size: int,
    chunk: int,
    text_file: Path | None,
    out: Path,
    dms_mode: str,
    **_: object,
) -> None:
    """Serve the task suite through the paged KV cache under each policy and compression ratio.

    Writes a table (task × length × policy × CR → accuracy, achieved CR), eval.json and
    eval.png (accuracy vs achieved compression). With --text FILE: perplexity of the text
    under each policy and KL(dense ‖ policy), plus text.png.
    """
    from agentrt.errors import ConfigError, ModelLoadError
    from agentrt.evals.options import parse_spec

    spec = parse_spec(
        tasks=tasks,
        lengths=lengths,
        policies=policies,
        crs=crs,
        n_items=n_items,
        seed=seed,
        max_new_tokens=max_new_tokens,
    )
    bad = [
        f"--{k} {v} must be >= 1"
        for k, v in (("batch-size", batch_size), ("chunk", chunk))
        if v < 1
    ]
    if bad:
        raise ConfigError("; ".join(bad))
    text = _read_text(text_file) if text_file else None
    run_tasks = text is None or ctx.get_parameter_source("tasks") is ParameterSource.COMMANDLINE
    settings = resolve_settings(ctx)

    from agentrt.engine import resolve_device
    from agentrt.evals.plot import plot_accuracy, plot_text
    from agentrt.evals.result import EvalResult
    from agentrt.evals.runner import evaluate
    from agentrt.evals.text_eval import evaluate_text
    from agentrt.models.resolve import load_resolved

    model = load_resolved(
        settings.model,
        dms=dms_mode,
        device=resolve_device(settings.device),
        home=settings.home,
        progress=(ctx.obj or {}).get("verbosity", 0) >= 0,
    )
    if model.tokenizer is None:
        raise ModelLoadError(
            f"{settings.model} has no tokenizer", hint="save the tokenizer into the model folder"
        )
    progress = (ctx.obj or {}).get("verbosity", 0) >= 0
    result = EvalResult()
    if run_tasks:
        result = evaluate(
            model,
            model.tokenizer,
            tasks=spec.tasks,
            lengths=spec.lengths,
            policies=spec.policies,
            crs=spec.crs,
            n_items=spec.n_items,
            seed=spec.seed,
            max_new_tokens=spec.max_new_tokens,
            batch_size=batch_size,
            prefill_chunk=chunk,
            progress=progress,
            match_dms=spec.match_dms,
        )
    if text is not None:
        result.config["text_file"] = str(text_file)
        evaluate_text(
            model,
            model.tokenizer,
            text,
            lengths=spec.lengths,
            policies=spec.policies,
            crs=spec.crs,
            chunk=chunk,
            progress=progress,
            result=result,
            match_dms=spec.match_dms,
        )
    result.config["command"] = " ".join(["agentrt", *sys.argv[1:]])
    result.config["model"] = settings.model
    out.mkdir(parents=True, exist_ok=True)
    written = [result.save_json(out / "eval.json")]
    table = result.format_table()
    (out / "eval.txt").write_text(table + "\n", encoding="utf-8")
    written.append(out / "eval.txt")
    if result.rows:
        written.append(plot_accuracy(result, out / "eval.png"))
    if result.text_rows:
        written.append(plot_text(result, out / "text.png"))
    click.echo(table)
    click.echo("wrote " + ", ".join(str(p) for p in written))


def _read_text(path: Path) -> str:
    """The --text file as UTF-8 (ConfigError naming the file otherwise)."""
    from agentrt.errors import ConfigError

    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(
            f"cannot read --text {path}: {err}", hint="pass a UTF-8 text file"
        ) from err
