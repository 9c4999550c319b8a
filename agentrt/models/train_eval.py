"""Held-out compression and KL of trained adapters at several context lengths.

    python -m agentrt.models.train_eval --model DIR --adapters DIR --data heldout.jsonl \
        --seq-lens 2048,4096,8192 --blocks 2

Loads the base model, copies the adapters in (an `adapters/` folder or a checkpoint),
packs the held-out text into blocks of each length and serves every block through the
paged cache with hard decisions, exactly as `agentrt retrofit`'s report does: the
compression ratio (tokens × streams / slots held, window included) and the mean
KL(served ‖ dense model) per token. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any


def evaluate(
    model_dir: str, adapters: str, data: list[str], seq_lens: list[int], blocks: int, threads: int
) -> dict[str, Any]:
    """The measurement for each length."""
    import torch

    from agentrt.dms.loader import load_model
    from agentrt.dms.retrofit.adapter_files import apply_adapter_folder, read_adapter_folder
    from agentrt.dms.retrofit.data import pack_blocks, read_stream
    from agentrt.dms.retrofit.report import (
        dense_teacher,
        evaluate_heldout,
        expected_compression_ratio,
    )

    if threads:
        torch.set_num_threads(threads)
    _, dms = read_adapter_folder(adapters)
    model = load_model(model_dir, dms=dms, device="cpu", dtype=torch.float32)
    apply_adapter_folder(model, adapters)
    stream, _, _ = read_stream(data, model.tokenizer)
    eos = getattr(model.tokenizer, "eos_token_id", None)
    results: dict[str, Any] = {"adapters": adapters, "window": dms.window_size, "lengths": {}}
    for seq in seq_lens:
        start = time.perf_counter()
        packed = pack_blocks(stream, seq, 1, "held-out data")[:blocks]
        held = evaluate_heldout(model, dense_teacher(model), packed, eos)
        results["lengths"][str(seq)] = {
            "blocks": held["blocks"],
            "compression_ratio": round(held["compression_ratio"], 3),
            "kl_to_dense": round(held["kl_to_teacher"], 4),
            "cr_if_exact_8x": round(expected_compression_ratio(seq, dms.window_size, 8.0), 3),
            "seconds": round(time.perf_counter() - start, 1),
        }
    return results


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="the base model folder")
    parser.add_argument("--adapters", required=True, help="adapters/ or checkpoint-N folder")
    parser.add_argument("--data", required=True, action="append", help="held-out text/JSONL")
    parser.add_argument("--seq-lens", default="2048,4096,8192")
    parser.add_argument("--blocks", type=int, default=2, help="blocks per length")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    lens = [int(x) for x in args.seq_lens.split(",") if x]
    print(
        json.dumps(evaluate(args.model, args.adapters, args.data, lens, args.blocks, args.threads))
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
