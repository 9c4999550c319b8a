"""Prefill suite: tokens/s of one prompt, DMS vs the same engine dense vs HF forward."""

from __future__ import annotations

import tempfile
from typing import Any

from agentrt.bench.method import Case, Sample, interleaved, paired_ratio, summarize, timed
from agentrt.bench.report import bar_plot, fmt_spread, md_table
from agentrt.bench.workload import BenchModels, hf_forward, text_ids


class EnginePrefill:
    """An engine whose `run(ids)` prefills a fresh session and frees it."""

    def __init__(self, model: Any, kv_budget: str, kv_dtype: str | None = None) -> None:
        from agentrt.engine import Engine

        self._home = tempfile.TemporaryDirectory(prefix="agentrt-bench-prefill-")
        home = self._home.name
        self.engine = Engine(
            model, kv_budget=kv_budget, kv_dtype=kv_dtype, home=home, db=f"sqlite:///{home}/b.db"
        )
        self.device = model.device
        self.last: dict[str, Any] = {}

    def run(self, ids: list[int]) -> Sample:
        """Prefill `ids` into a new session (timed), then close it."""
        s = self.engine.new_session()
        seconds, _ = timed(self.device, lambda: s.prefill(ids))
        st = s.stats()
        self.last = {"compression_ratio": st["compression_ratio"], "kv_bytes": st["kv_bytes"]}
        s.close()
        return Sample(seconds, len(ids))

    def close(self) -> None:
        """Free the engine."""
        self.engine.close()
        self._home.cleanup()


def run_prefill(
    models: BenchModels,
    *,
    lengths: tuple[int, ...],
    repeats: int,
    warmup: int = 1,
    kv_budget: str = "1GiB",
    kv_dtype: str | None = None,  # K/V storage dtype; None: AGENTRT_KV_DTYPE, else auto
    progress: Any = None,
) -> dict[str, Any]:
    """Prefill tokens/s per prompt length for every variant, with paired ratios vs HF."""
    engines: dict[str, EnginePrefill] = {}
    if models.dms is not None:
        engines["agentrt DMS"] = EnginePrefill(models.dms, kv_budget, kv_dtype)
    engines["agentrt dense"] = EnginePrefill(models.dense, kv_budget, kv_dtype)
    rows = []
    try:
        for n in lengths:
            ids = text_ids(models.dense, n)
            cases = [Case(name, lambda e=e, x=ids: e.run(x)) for name, e in engines.items()]
            cases.append(Case("HF forward", lambda x=ids: hf_forward(models.baseline, x)))
            samples = interleaved(
                cases,
                repeats=repeats,
                warmup=warmup,
                progress=progress and (lambda msg, n=n: progress(f"prefill {n}: {msg}")),
            )
            row: dict[str, Any] = {"tokens": n}
            row["variants"] = {name: summarize(s) for name, s in samples.items()}
            for name, e in engines.items():
                row["variants"][name].update(e.last)
            row["ratio_vs_hf"] = {
                name: paired_ratio(samples[name], samples["HF forward"], rate=True)
                for name in engines
            }
            rows.append(row)
    finally:
        for e in engines.values():
            e.close()
    return {"suite": "prefill", "rows": rows, "repeats": repeats, "warmup": warmup}


def prefill_table(result: dict[str, Any]) -> str:
    """Markdown: tokens/s median (min–max) per variant and the paired ratios vs HF."""
    names = list(result["rows"][0]["variants"])
    engines = list(result["rows"][0]["ratio_vs_hf"])
    headers = ["prompt", *[f"{n} tok/s" for n in names], *[f"{n} / HF" for n in engines]]
    body = []
    for row in result["rows"]:
        cells = [str(row["tokens"])]
        cells += [fmt_spread(row["variants"][n]["tokens_per_s"]) for n in names]
        cells += [fmt_spread(row["ratio_vs_hf"][n], 2) for n in engines]
        body.append(cells)
    return md_table(headers, body)


def prefill_plot(result: dict[str, Any], path: Any) -> Any:
    """Bars of prefill tokens/s per prompt length."""
    names = list(result["rows"][0]["variants"])
    return bar_plot(
        path,
        title="prefill tokens/s",
        ylabel="tokens/s",
        groups=[f"{r['tokens']} tokens" for r in result["rows"]],
        series={n: [r["variants"][n]["tokens_per_s"] for r in result["rows"]] for n in names},
    )
