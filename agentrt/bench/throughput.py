"""Decode throughput of the engine with N concurrent sessions vs HF `generate` (dense cache).

Same method as the decode suite (`agentrt.bench.decode`): both sides continue prefilled
contexts for `new_tokens` forward passes per round and are credited one token per session
per forward pass; rounds are interleaved after a warm-up, and the speedup is the median of
per-round ratios.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch

from agentrt.bench.decode import EngineDecoder
from agentrt.bench.method import Case, interleaved, paired_ratio, summarize
from agentrt.bench.workload import HFDecoder, text_ids
from agentrt.bench.workload import hf_baseline as untouched_copy


def _flat(summary: dict[str, Any]) -> dict[str, Any]:
    """A decode summary with median seconds / tokens/s as plain numbers (spreads kept)."""
    return {
        "tokens": summary["tokens"],
        "seconds": summary["seconds"]["median"],
        "tokens_per_s": summary["tokens_per_s"]["median"],
        "tokens_per_s_spread": summary["tokens_per_s"],
        "samples": summary["samples"],
    }


def run_throughput_bench(
    model: Any,
    *,
    concurrency: tuple[int, ...] = (1, 8, 32),
    prompt_len: int = 128,
    new_tokens: int = 32,
    kv_budget: str = "2GiB",
    hf_baseline: bool = True,
    repeats: int = 5,
    warmup: int = 1,
) -> dict:
    """Measure engine vs HF decode tokens/s for each concurrency level; JSON-able result."""
    rows = []
    baseline = untouched_copy(model) if hf_baseline else None
    for c in concurrency:
        eng = EngineDecoder(model, c, prompt_len, kv_budget)
        cases = [Case("engine", lambda e=eng: e.step(new_tokens))]
        if hf_baseline:
            hf = HFDecoder(
                baseline, [text_ids(model, prompt_len, offset=997 * i) for i in range(c)]
            )
            cases.append(Case("hf_generate", lambda h=hf: h.step(new_tokens)))
        samples = interleaved(cases, repeats=repeats, warmup=warmup)
        row: dict[str, Any] = {"concurrency": c}
        row["engine"] = {
            **_flat(summarize(samples["engine"])),
            "steps": eng.last_steps,
            **eng.stats(),
        }
        eng.close()
        if hf_baseline:
            row["hf_generate"] = _flat(summarize(samples["hf_generate"]))
            ratio = paired_ratio(samples["engine"], samples["hf_generate"], rate=True)
            row["speedup"], row["speedup_spread"] = ratio["median"], ratio
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
        "repeats": repeats,
        "warmup": warmup,
        "dms": model.dms.to_hf_dict() if model.dms is not None else None,
        "rows": rows,
    }


def format_table(result: dict) -> str:
    """A plain-text table of a throughput result (medians; speedup = median per-round ratio)."""
    lines = [
        f"decode throughput on {result['gpu'] or result['device']} ({result['dtype']}), "
        f"median of {result['repeats']} interleaved rounds"
    ]
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
    from agentrt.bench.report import bar_plot

    rows = result["rows"]
    series = {"agentrt engine": [r["engine"]["tokens_per_s_spread"] for r in rows]}
    if all("hf_generate" in r for r in rows):
        series["HF generate (dense)"] = [r["hf_generate"]["tokens_per_s_spread"] for r in rows]
    return bar_plot(
        path,
        title=f"decode throughput, {result['gpu'] or result['device']}",
        ylabel="decode tokens/s",
        groups=[str(r["concurrency"]) for r in rows],
        series=series,
    )
