"""`agentrt retrofit`: teach a Llama-family model DMS by self-distillation (docs/RETROFIT.md).

Every option is a flag and a YAML key of `--config` alike; a flag wins over the YAML, the
YAML over `AGENTRT_MODEL` / `AGENTRT_DEVICE`, those over the defaults. Torch is imported
only when the command runs.
"""

from __future__ import annotations

from typing import Any

import click

from agentrt.cli.options import device_option, model_option, setting_source

# (flag, YAML key, click type, help); every flag defaults to None = "not given".
_OPTIONS: list[tuple[str, str, Any, str]] = [
    (
        "--flavour",
        "flavour",
        click.STRING,
        "adapter (base frozen, default) or qneuron (all weights train).",
    ),
    (
        "--window",
        "window",
        click.INT,
        "DMS window w: the w + 1 newest tokens are always kept (512).",
    ),
    ("--target-cr", "target_cr", click.FLOAT, "Final compression ratio of the schedule (8)."),
    ("--initial-cr", "initial_cr", click.FLOAT, "Compression ratio at step 0 (1)."),
    ("--steps", "steps", click.INT, "Optimizer updates (300)."),
    ("--ramp-steps", "ramp_steps", click.INT, "Updates over which CR rises linearly (250)."),
    ("--lr", "lr", click.FLOAT, "AdamW learning rate, constant (3e-5)."),
    ("--batch-size", "batch_size", click.INT, "Sequences per micro-batch (1)."),
    ("--grad-accum", "grad_accum", click.INT, "Micro-batches per update (1)."),
    ("--seq-len", "seq_len", click.INT, "Tokens per packed training sequence (4096)."),
    ("--tau", "tau", click.FLOAT, "Gumbel-sigmoid temperature (0.1)."),
    ("--alpha-per", "alpha_per", click.STRING, "head or layer: one decision per KV head or layer."),
    ("--seed", "seed", click.INT, "Seed of data order, held-out split and noise (42)."),
    ("--dtype", "dtype", click.STRING, "auto, float32 or bfloat16 autocast (auto: bf16 on CUDA)."),
    (
        "--save-every",
        "save_every",
        click.INT,
        "Checkpoint every N updates; 0 = only at the end (100).",
    ),
    ("--eval-fraction", "eval_fraction", click.FLOAT, "Share of packed blocks held out (0.05)."),
    (
        "--max-eval-blocks",
        "max_eval_blocks",
        click.INT,
        "Held-out blocks served for the report (16).",
    ),
    (
        "--objective",
        "objective",
        click.STRING,
        "kl (end-to-end KL, default) or layer_local (each layer's attention output).",
    ),
    (
        "--eval-seq-len",
        "eval_seq_len",
        click.INT,
        "Held-out block length for the report (needs --heldout-data; 0: seq_len).",
    ),
    (
        "--save-every-minutes",
        "save_every_minutes",
        click.FLOAT,
        "Also checkpoint once this many minutes passed since the last one (0: off).",
    ),
    (
        "--resume-from",
        "resume_from",
        click.STRING,
        "Continue from this checkpoint folder (adapters + trainer_state.pt), e.g. a committed one.",
    ),
    (
        "--init-adapters",
        "init_adapters",
        click.STRING,
        "Start a fresh schedule from the adapters in this folder (adapter flavour).",
    ),
    (
        "--max-minutes",
        "max_minutes",
        click.FLOAT,
        "Stop with a checkpoint after this many minutes of training (0: off).",
    ),
    ("--threads", "threads", click.INT, "Torch CPU threads (0: torch's default)."),
    (
        "--lora-rank",
        "lora_rank",
        click.INT,
        "Also train a rank-r LoRA on q/k/v/o beside the adapters (0: none).",
    ),
    ("--lora-alpha", "lora_alpha", click.FLOAT, "LoRA delta = (alpha / rank) · B A (default 16)."),
    ("--lora-lr", "lora_lr", click.FLOAT, "AdamW learning rate of the LoRA (default 2e-4)."),
]


def _retrofit_options(func: Any) -> Any:
    """Attach the training options (all default None so the YAML can fill them)."""
    for flag, key, kind, text in reversed(_OPTIONS):
        func = click.option(flag, key, type=kind, default=None, help=text)(func)
    return func


def collect_overrides(ctx: click.Context, yaml_keys: set[str]) -> dict[str, Any]:
    """Option values given on the command line, plus env-var model/device the YAML lacks."""
    params = ctx.params
    given = {k: v for k, v in params.items() if v is not None and k != "config"}
    for key in ("data", "heldout_data"):
        if params.get(key) == ():
            given.pop(key, None)
    for name in ("model", "device"):
        if name in given and setting_source(ctx, name) == "env" and name in yaml_keys:
            given.pop(name)  # the YAML wins over the environment
    return given


@click.command(short_help="Teach a model DMS (learned KV eviction) by self-distillation.")
@model_option
@click.option(
    "--data",
    "data",
    multiple=True,
    metavar="PATH",
    help="Text, JSONL (`text`) or chat JSONL (`messages`) file or folder; repeatable.",
)
@click.option(
    "--heldout-data",
    "heldout_data",
    multiple=True,
    metavar="PATH",
    help="Held-out files (a split by document); then every --data block trains. Repeatable.",
)
@click.option(
    "--out",
    "out",
    default=None,
    metavar="DIR",
    help="Output folder (adapters/ or a model folder, log, checkpoints, report).",
)
@click.option(
    "--config",
    "config",
    default=None,
    metavar="YAML",
    type=click.Path(dir_okay=False),
    help="YAML file with any of these options (flags win).",
)
@_retrofit_options
@device_option
@click.option(
    "--resume/--no-resume",
    "resume",
    default=None,
    help="Continue from the newest checkpoint in --out (bit-exact).",
)
@click.option(
    "--gradient-checkpointing/--no-gradient-checkpointing",
    "gradient_checkpointing",
    default=None,
    help="Recompute MLP activations in the backward to save memory.",
)
@click.option(
    "--save-model/--no-save-model",
    "save_model",
    default=None,
    help="Adapter flavour: also write a whole model folder (base + adapters) into --out.",
)
@click.pass_context
def retrofit(ctx: click.Context, **_: Any) -> None:
    """Retrofit DMS onto --model by distilling it into itself on --data; writes --out.

    Loss per token: KL(student ‖ teacher) at temperature 1, plus max(0, target − evicted
    fraction) with target = 1 − 1/CR(step), CR rising from initial_cr to target_cr over
    ramp_steps (or, with --objective layer_local, each layer's attention output against the
    dense one). --out gets adapters/ (adapter flavour: only the adapter tensors, loaded
    onto the unchanged base) or an HF model folder (q-neuron flavour), a JSONL log,
    checkpoints/ and retrofit_report.json (held-out compression ratio and KL).
    """
    from agentrt.dms.retrofit.config import load_config, read_yaml_options
    from agentrt.dms.retrofit.trainer import REPORT_FILE
    from agentrt.dms.retrofit.trainer import retrofit as run_retrofit

    path = ctx.params.get("config")
    yaml_keys = set(read_yaml_options(path)[0]) if path else set()
    cfg = load_config(path, collect_overrides(ctx, yaml_keys))
    verbosity = (ctx.obj or {}).get("verbosity", 0)
    report = run_retrofit(cfg, progress=verbosity >= 0)
    held = report["heldout"]
    if verbosity >= 0:
        click.echo(f"wrote {cfg.out} (steps {report['steps']}, flavour {cfg.flavour})")
        if held["compression_ratio"] is not None:
            click.echo(
                f"held-out: compression ratio {held['compression_ratio']:.2f} "
                f"(expected ≈ {held['expected_compression_ratio']:.2f} at "
                f"{report['train']['heldout_seq_len']} tokens), "
                f"KL to teacher {held['kl_to_teacher']:.4f} nats/token"
            )
        click.echo(f"report: {cfg.out}/{REPORT_FILE}")
