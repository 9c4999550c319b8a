"""Decode suite: tokens/s of N concurrent sessions, DMS vs the same engine dense vs HF generate."""

from __future__ import annotations

from typing import Any

from agentrt.bench.method import Case, Sample, interleaved, paired_ratio, summarize, timed
from agentrt.bench.report import bar_plot, fmt_spread, md_table
from agentrt.bench.workload import BenchModels, HFDecoder, text_ids


class EngineDecoder:
    """`sessions` engine sessions prefilled with `context` tokens, decoding together."""

    def __init__(
        self, model: Any, sessions: int, context: int, kv_budget: str, kv_dtype: str | None = None
    ) -> None:
        import tempfile

        from agentrt.engine import Engine

        self._home = tempfile.TemporaryDirectory(prefix="agentrt-bench-decode-")
        home = self._home.name
        self.engine = Engine(
            model, kv_budget=kv_budget, kv_dtype=kv_dtype, home=home, db=f"sqlite:///{home}/b.db"
        )
        self.sessions = [self.engine.new_session() for _ in range(sessions)]
        for i, s in enumerate(self.sessions):
            s.prefill(text_ids(model, context, offset=997 * i))
        # Take each session's first token from its prefill logits, so every round after this
        # one starts by forwarding a pending token: k tokens per session cost k forward passes.
        self._generate(1)
        self.device = model.device
        self.last_steps = 0

    def step(self, k: int) -> Sample:
        """k engine steps; counts the decode tokens the forward passes carried."""
        tel = self.engine.telemetry
        before, steps = tel.decode_tokens, tel.steps

        seconds, _ = timed(self.device, lambda: self._generate(k))
        self.last_steps = tel.steps - steps
        return Sample(seconds, tel.decode_tokens - before)

    def _generate(self, k: int) -> None:
        """k tokens for every session, all requests joined to the same engine steps."""
        streams = [s.generate(k, ignore_eos=True) for s in self.sessions]
        live = list(streams)
        while live:
            for st in list(live):
                if next(st, None) is None:
                    live.remove(st)

    def stats(self) -> dict[str, Any]:
        """Compression of the first session."""
        st = self.sessions[0].stats()
        return {"compression_ratio": st["compression_ratio"], "kv_bytes": st["kv_bytes"]}

    def close(self) -> None:
        """Free the engine."""
        self.engine.close()
        self._home.cleanup()


def run_decode(
    models: BenchModels,
    *,
    sessions: tuple[int, ...],
    context: int,
    steps: int,
    repeats: int,
    warmup: int = 1,
    kv_budget: str = "1GiB",
    kv_dtype: str | None = None,  # K/V storage dtype; None: AGENTRT_KV_DTYPE, else auto
    hf: bool = True,
    progress: Any = None,
) -> dict[str, Any]:
    """Decode tokens/s per concurrency level for every variant, with paired ratios."""
    check_positions(models.dense.arch.max_positions, context, steps, repeats + warmup)
    rows = []
    for n in sessions:
        variants: dict[str, Any] = {}
        if models.dms is not None:
            variants["agentrt DMS"] = EngineDecoder(models.dms, n, context, kv_budget, kv_dtype)
        variants["agentrt dense"] = EngineDecoder(models.dense, n, context, kv_budget, kv_dtype)
        if hf:
            rows_ids = [text_ids(models.dense, context, offset=997 * i) for i in range(n)]
            variants["HF generate"] = HFDecoder(models.baseline, rows_ids)
        cases = [Case(name, lambda v=v: v.step(steps)) for name, v in variants.items()]
        samples = interleaved(
            cases,
            repeats=repeats,
            warmup=warmup,
            progress=progress and (lambda msg, n=n: progress(f"decode {n} sessions: {msg}")),
        )
        row: dict[str, Any] = {"sessions": n, "context": context, "steps": steps}
        row["variants"] = {name: summarize(s) for name, s in samples.items()}
        for name, v in variants.items():
            if isinstance(v, EngineDecoder):
                row["variants"][name].update(v.stats())
                v.close()
        if "HF generate" in samples:
            row["ratio_vs_hf"] = {
                name: paired_ratio(s, samples["HF generate"], rate=True)
                for name, s in samples.items()
                if name != "HF generate"
            }
        if "agentrt DMS" in samples:
            row["dms_vs_dense"] = paired_ratio(
                samples["agentrt DMS"], samples["agentrt dense"], rate=True
            )
        rows.append(row)
    return {"suite": "decode", "rows": rows, "repeats": repeats, "warmup": warmup}


def check_positions(limit: int, context: int, steps: int, rounds: int) -> None:
    """Refuse, before any prefill, a run whose sessions would outgrow the model's positions.

    A session holds the context, the first token taken from its prefill, then `steps`
    tokens per round.
    """
    from agentrt.errors import ConfigError

    need = context + 1 + steps * rounds
    if limit and need > limit:
        room = limit - (need - context)  # the longest context that still fits
        raise ConfigError(
            f"decode: a {context}-token context, 1 first token and {steps} steps × {rounds} "
            f"rounds need {need} positions, beyond the model's {limit}",
            hint=f"use --context {room} or less (or fewer steps or repeats)"
            if room >= 1
            else "use fewer --steps or --repeats: the decoded tokens alone do not fit",
        )


def decode_table(result: dict[str, Any]) -> str:
    """Markdown: tokens/s median (min–max) per variant and the paired ratios vs HF."""
    names = list(result["rows"][0]["variants"])
    headers = ["sessions × context", *[f"{n} tok/s" for n in names]]
    ratio_names = [n for n in names if n != "HF generate" and "ratio_vs_hf" in result["rows"][0]]
    headers += [f"{n} / HF" for n in ratio_names]
    body = []
    for row in result["rows"]:
        cells = [f"{row['sessions']} × {row['context']}"]
        cells += [fmt_spread(row["variants"][n]["tokens_per_s"]) for n in names]
        cells += [fmt_spread(row["ratio_vs_hf"][n], 2) for n in ratio_names]
        body.append(cells)
    return md_table(headers, body)


def decode_plot(result: dict[str, Any], path: Any) -> Any:
    """Bars of decode tokens/s per concurrency level."""
    names = list(result["rows"][0]["variants"])
    return bar_plot(
        path,
        title=f"decode tokens/s, context {result['rows'][0]['context']}",
        ylabel="tokens/s",
        groups=[f"{r['sessions']} sessions" for r in result["rows"]],
        series={n: [r["variants"][n]["tokens_per_s"] for r in result["rows"]] for n in names},
    )
