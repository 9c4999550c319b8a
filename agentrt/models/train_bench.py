"""Cost of one retrofit update on the CPU: tokens/s and peak RSS at a given sequence length.

    python -m agentrt.models.train_bench --model DIR --data FILE --seq-len 4096 [--dense]

Builds the same `Retrofitter` as `agentrt retrofit` (adapter flavour, batch 1), runs
`--warmup` updates and then `--steps` timed ones, and prints one JSON line: the seconds
per update, tokens/s, tokens per CPU-second (what a shared machine's load does not
change much) and the process's peak resident memory (ru_maxrss, so run one
measurement per process). `--dense` uses the dense [T, T] soft mask instead of the tiled
attention (the path `agentrt retrofit` used before).
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path


def measure(args: argparse.Namespace) -> dict[str, object]:
    """Run the updates and return the measurement."""
    import torch

    from agentrt.dms.retrofit import RetrofitConfig, Retrofitter

    torch.set_num_threads(args.threads)
    out = Path(tempfile.mkdtemp(prefix="agentrt-train-bench-")) / "out"
    cfg = RetrofitConfig(
        model=args.model,
        data=(args.data,),
        out=str(out),
        window=args.window,
        seq_len=args.seq_len,
        steps=args.warmup + args.steps,
        ramp_steps=0,
        target_cr=8.0,
        lr=1e-3,
        device="cpu",
        eval_fraction=0.5,
        objective=args.objective,
        gradient_checkpointing=args.gradient_checkpointing,
        threads=args.threads,
    )
    run = Retrofitter(cfg, progress=False)
    run.tiled_attention = not args.dense
    for step in range(args.warmup):
        run.train_step(step)
    start, cpu0 = time.perf_counter(), _cpu_seconds()
    for step in range(args.warmup, args.warmup + args.steps):
        run.train_step(step)
    took = (time.perf_counter() - start) / args.steps
    cpu = (_cpu_seconds() - cpu0) / args.steps
    return {
        "seq_len": args.seq_len,
        "attention": "dense" if args.dense else "tiled",
        "objective": args.objective,
        "threads": args.threads,
        "gradient_checkpointing": args.gradient_checkpointing,
        "s_per_update": round(took, 2),
        "tokens_per_s": round(args.seq_len / took, 1),
        "cpu_s_per_update": round(cpu, 2),
        "tokens_per_cpu_s": round(args.seq_len / cpu, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (all threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True, help="text or JSONL with ≥ 2 blocks of seq-len")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--objective", default="kl")
    parser.add_argument("--dense", action="store_true", help="dense [T, T] soft mask")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    print(json.dumps(measure(parser.parse_args(argv))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
