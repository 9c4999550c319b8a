"""Memory suite: KV bytes a session holds and how many fit a fixed budget, DMS vs dense."""

from __future__ import annotations

import tempfile
from typing import Any

from agentrt.bench.report import bar_plot, md_table
from agentrt.bench.workload import BenchModels, text_ids

CPU_CONTEXTS = (1024, 4096, 8192)
GPU_CONTEXTS = (4096, 32768, 131072)


def run_memory(
    models: BenchModels,
    *,
    contexts: tuple[int, ...],
    budget: int,
    kv_budget: str = "2GiB",
    kv_dtype: str | None = None,  # K/V storage dtype; None: AGENTRT_KV_DTYPE, else auto
    progress: Any = None,
) -> dict[str, Any]:
    """Prefill one session per context length with DMS; read the bytes its blocks hold.

    Dense bytes are what the same session holds with eviction off: every token in every
    (layer, KV head) stream, at the same block granularity (`CacheSpec.bytes_for`).
    """
    from agentrt.engine import Engine

    model = models.served
    rows = []
    with tempfile.TemporaryDirectory(prefix="agentrt-bench-memory-") as home:
        eng = Engine(
            model, kv_budget=kv_budget, kv_dtype=kv_dtype, home=home, db=f"sqlite:///{home}/b.db"
        )
        spec = eng.pool.spec
        streams = spec.num_layers * spec.num_kv_heads
        try:
            for n in contexts:
                s = eng.new_session()
                s.prefill(text_ids(model, n))
                st = s.stats()
                s.close()
                dense = spec.bytes_for([n] * streams)
                rows.append(
                    {
                        "tokens": n,
                        "kv_bytes": st["kv_bytes"],
                        "slot_bytes": st["slot_bytes"],
                        "dense_bytes": dense,
                        "compression_ratio": st["compression_ratio"],
                        "dms_over_dense": st["kv_bytes"] / dense,
                        "sessions_in_budget": budget // max(st["kv_bytes"], 1),
                        "dense_sessions_in_budget": budget // dense,
                    }
                )
                if progress:
                    progress(f"memory {n}: {st['kv_bytes']} of {dense} dense bytes")
        finally:
            eng.close()
    return {
        "suite": "memory",
        "rows": rows,
        "budget_bytes": budget,
        "kv_dtype": str(spec.dtype),
        "block_size": spec.block_size,
    }


def memory_table(result: dict[str, Any]) -> str:
    """Markdown: MB held, ratio to dense, sessions that fit the budget."""
    from agentrt.dms.budget import format_bytes

    budget = format_bytes(result["budget_bytes"])
    headers = [
        "context",
        "DMS MB",
        "dense MB",
        "DMS / dense",
        "compression (tokens/slot)",
        f"DMS sessions in {budget}",
        f"dense sessions in {budget}",
    ]
    body = [
        [
            r["tokens"],
            f"{r['kv_bytes'] / 1e6:.1f}",
            f"{r['dense_bytes'] / 1e6:.1f}",
            f"{r['dms_over_dense']:.3f}",
            f"{r['compression_ratio']:.2f}",
            r["sessions_in_budget"],
            r["dense_sessions_in_budget"],
        ]
        for r in result["rows"]
    ]
    return md_table(headers, body)


def memory_plot(result: dict[str, Any], path: Any) -> Any:
    """Bars of MB held per session, DMS vs dense."""
    rows = result["rows"]
    return bar_plot(
        path,
        title=f"KV bytes per session ({result['kv_dtype']})",
        ylabel="MB",
        groups=[f"{r['tokens']} tokens" for r in rows],
        series={
            "DMS": [r["kv_bytes"] / 1e6 for r in rows],
            "dense": [r["dense_bytes"] / 1e6 for r in rows],
        },
    )
