"""Decode throughput of the engine with N concurrent sessions vs HF `generate` (dense cache)."""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def engine_decode_rate(
    model: Any, concurrency: int, prompt_len: int, new_tokens: int, **engine_kw: Any
) -> dict:
    """Tokens/s of `concurrency` sessions decoding together (prefill excluded)."""
    from agentrt.engine import Engine

    eng = Engine(model, **engine_kw)
    gen = torch.Generator().manual_seed(0)
    vocab = model.arch.vocab_size
    sessions = [eng.new_session(seed=i) for i in range(concurrency)]
    for s in sessions:
        s.prefill(torch.randint(0, vocab, (prompt_len,), generator=gen).tolist())
    _sync(model.device)
    steps0 = eng.telemetry.steps
    t0 = time.perf_counter()
    # Start every request first (each joins the next engine step), then consume round-robin:
    # whichever stream runs dry steps the engine for all of them.
    streams = [s.generate(new_tokens, ignore_eos=True) for s in sessions]
    counts = [0] * concurrency
    live = list(range(concurrency))
    while live:
        for i in list(live):
            try:
                next(streams[i])
                counts[i] += 1
            except StopIteration:
                live.remove(i)
    _sync(model.device)
    seconds = time.perf_counter() - t0
    stats = sessions[0].stats()
    eng.close()
    tokens = sum(counts)
    return {
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "steps": eng.telemetry.steps - steps0,
        "compression_ratio": stats["compression_ratio"],
    }


def hf_decode_rate(model: Any, batch: int, prompt_len: int, new_tokens: int) -> dict:
    """Tokens/s of HF `generate` (greedy, dense DynamicCache), decode only: t(new) − t(1)."""
    hf = model.hf
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.arch.vocab_size, (batch, prompt_len), generator=gen).to(
        model.device
    )
    mask = torch.ones_like(ids)

    def run(n: int) -> float:
        _sync(model.device)
        t0 = time.perf_counter()
        with torch.no_grad():
            hf.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=0,
            )
        _sync(model.device)
        return time.perf_counter() - t0

    run(2)  # warm-up
    seconds = max(run(new_tokens) - run(1), 1e-9)
    tokens = batch * (new_tokens - 1)
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}


def run_throughput_bench(
    model: Any,
    *,
    concurrency: tuple[int, ...] = (1, 8, 32),
    prompt_len: int = 128,
    new_tokens: int = 32,
    kv_budget: str = "2GiB",
    block_size: int = 16,
    hf_baseline: bool = True,
) -> dict:
    """Measure engine vs HF decode tokens/s for each concurrency level; JSON-able result."""
    rows = []
    for c in concurrency:
        row: dict[str, Any] = {"concurrency": c}
        row["engine"] = engine_decode_rate(
            model, c, prompt_len, new_tokens, kv_budget=kv_budget, block_size=block_size
        )
        if hf_baseline:
            row["hf_generate"] = hf_decode_rate(model, c, prompt_len, new_tokens)
            row["speedup"] = row["engine"]["tokens_per_s"] / row["hf_generate"]["tokens_per_s"]
        rows.append(row)
    return {
        "bench": "throughput",
        "device": str(model.device),
        "gpu": torch.cuda.get_device_name(model.device) if model.device.type == "cuda" else None,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "dtype": str(model.dtype),
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "dms": model.dms.to_hf_dict() if model.dms is not None else None,
        "rows": rows,
    }


def format_table(result: dict) -> str:
    """A plain-text table of a throughput result."""
    lines = [f"decode throughput on {result['gpu'] or result['device']} ({result['dtype']})"]
    lines.append(
        f"{'sessions':>8}  {'engine tok/s':>12}  {'HF tok/s':>10}  {'speedup':>7}  {'CR':>5}"
    )
    for row in result["rows"]:
        hf = row.get("hf_generate", {}).get("tokens_per_s")
        lines.append(
            f"{row['concurrency']:>8}  {row['engine']['tokens_per_s']:>12.1f}  "
            f"{(f'{hf:.1f}' if hf else '-'):>10}  {row.get('speedup', float('nan')):>7.2f}  "
            f"{row['engine']['compression_ratio']:>5.2f}"
        )
    return "\n".join(lines)


def plot(result: dict, path: Path) -> Path:
    """Bar chart of tokens/s per concurrency level (engine vs HF), saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [str(r["concurrency"]) for r in result["rows"]]
    eng = [r["engine"]["tokens_per_s"] for r in result["rows"]]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.38
    pos = range(len(xs))
    ax.bar([p - width / 2 for p in pos], eng, width, label="agentrt engine (DMS paged)")
    if all("hf_generate" in r for r in result["rows"]):
        hf = [r["hf_generate"]["tokens_per_s"] for r in result["rows"]]
        ax.bar([p + width / 2 for p in pos], hf, width, label="HF generate (dense)")
    ax.set_xticks(list(pos), xs)
    ax.set_xlabel("concurrent sessions")
    ax.set_ylabel("decode tokens/s")
    ax.set_title(f"decode throughput, {result['gpu'] or result['device']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
