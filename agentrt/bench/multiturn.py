"""Multi-turn suite: an agent conversation, agentrt sessions vs re-sending the history vs an HF cache.

Each turn adds `user_tokens` of text and `answer_tokens` generated greedily. Turns are
interleaved across the three variants (rotating order). "Recomputed" counts tokens a
variant's forward passes carried beyond the conversation itself: forwarded − (context − 1)
(the last answer token is never forwarded).
"""

from __future__ import annotations

import tempfile
from typing import Any

import torch

from agentrt.bench.method import Case, Sample, paired_ratio, spread, timed
from agentrt.bench.report import fmt_spread, md_table
from agentrt.bench.workload import BenchModels, quiet_hf, text_ids


class AgentrtTurns:
    """One engine session kept across turns."""

    def __init__(self, model: Any, kv_budget: str, kv_dtype: str | None = None) -> None:
        from agentrt.engine import Engine

        self._home = tempfile.TemporaryDirectory(prefix="agentrt-bench-multiturn-")
        home = self._home.name
        self.engine = Engine(
            model, kv_budget=kv_budget, kv_dtype=kv_dtype, home=home, db=f"sqlite:///{home}/b.db"
        )
        self.session = self.engine.new_session()
        self.device, self.forwarded, self.context = model.device, 0, 0

    def turn(self, user: list[int], answer: int) -> Sample:
        """Prefill the user's tokens, generate the answer (timed)."""
        tel = self.engine.telemetry
        before = tel.prefill_tokens + tel.decode_tokens

        def run() -> list[int]:
            self.session.prefill(user)
            return list(self.session.generate(answer, ignore_eos=True))

        seconds, out = timed(self.device, run)
        assert len(out) == answer, (len(out), answer)
        n = tel.prefill_tokens + tel.decode_tokens - before
        self.forwarded += n
        self.context += len(user) + answer
        return Sample(seconds, n)

    def stats(self) -> dict[str, Any]:
        """KV bytes held at the end vs dense."""
        st = self.session.stats()
        return {"kv_bytes": st["kv_bytes"], "dense_bytes": st["dense_bytes"]}

    def close(self) -> None:
        """Free the engine."""
        self.engine.close()
        self._home.cleanup()


class HFTurns:
    """HF `generate` each turn: from scratch over the whole history, or on a kept DynamicCache."""

    def __init__(self, model: Any, *, keep_cache: bool) -> None:
        from transformers import DynamicCache

        self.model, self.keep = model, keep_cache
        self.cache = DynamicCache() if keep_cache else None
        self.ids: list[int] = []
        self.forwarded, self.context, self.cached = 0, 0, 0

    def turn(self, user: list[int], answer: int) -> Sample:
        """Generate the answer to history + user (timed)."""
        from transformers import DynamicCache

        x = torch.tensor([self.ids + user], device=self.model.device)
        cache = self.cache if self.keep else DynamicCache()

        def run() -> Any:
            with torch.no_grad(), quiet_hf():
                return self.model.hf.generate(
                    input_ids=x,
                    attention_mask=torch.ones_like(x),
                    past_key_values=cache,
                    max_new_tokens=answer,
                    min_new_tokens=answer,
                    do_sample=False,
                    pad_token_id=0,
                )

        seconds, out = timed(self.model.device, run)
        cached = self.cached if self.keep else 0
        n = x.shape[1] - cached + answer - 1
        self.cached = x.shape[1] + answer - 1
        self.ids = out[0].tolist()
        self.forwarded += n
        self.context += len(user) + answer
        return Sample(seconds, n)


def run_multiturn(
    models: BenchModels,
    *,
    turns: int,
    user_tokens: int,
    answer_tokens: int,
    kv_budget: str = "1GiB",
    kv_dtype: str | None = None,  # K/V storage dtype; None: AGENTRT_KV_DTYPE, else auto
    progress: Any = None,
) -> dict[str, Any]:
    """Total and per-turn seconds, tokens forwarded and recomputed, per variant."""
    agent = AgentrtTurns(models.served, kv_budget, kv_dtype)
    variants: dict[str, Any] = {
        "agentrt session": agent,
        "re-send history": HFTurns(models.baseline, keep_cache=False),
        "HF dense cache kept": HFTurns(models.baseline, keep_cache=True),
    }
    samples: dict[str, list[Sample]] = {name: [] for name in variants}
    try:
        for t in range(turns):
            user = text_ids(models.dense, user_tokens, offset=131 * t)
            cases = [
                Case(n, lambda v=v, u=user: v.turn(u, answer_tokens)) for n, v in variants.items()
            ]
            shift = t % len(cases)
            for case in cases[shift:] + cases[:shift]:
                samples[case.name].append(case.run())
            if progress:
                progress(f"multiturn: turn {t + 1}/{turns}")
        kv = agent.stats()
    finally:
        agent.close()
    out: dict[str, Any] = {}
    for name, v in variants.items():
        out[name] = {
            "total_seconds": sum(s.seconds for s in samples[name]),
            "turn_seconds": spread([s.seconds for s in samples[name]]),
            "tokens_forwarded": v.forwarded,
            "context": v.context,
            "tokens_recomputed": v.forwarded - (v.context - 1),
        }
    out["agentrt session"].update(kv)
    return {
        "suite": "multiturn",
        "turns": turns,
        "user_tokens": user_tokens,
        "answer_tokens": answer_tokens,
        "variants": out,
        "turn_speedup_vs_resend": {
            name: paired_ratio(samples[name], samples["re-send history"], rate=False)
            for name in variants
            if name != "re-send history"
        },
        "samples": {name: [[s.seconds, s.tokens] for s in ss] for name, ss in samples.items()},
    }


def multiturn_table(result: dict[str, Any]) -> str:
    """Markdown: total time, per-turn time, tokens forwarded and recomputed per variant."""
    speed = result["turn_speedup_vs_resend"]
    headers = [
        "variant",
        "total s",
        "per turn s",
        "tokens forwarded",
        "recomputed",
        "per-turn speedup vs re-send",
    ]
    body = []
    for name, v in result["variants"].items():
        body.append(
            [
                name,
                f"{v['total_seconds']:.1f}",
                fmt_spread(v["turn_seconds"], 3),
                v["tokens_forwarded"],
                v["tokens_recomputed"],
                fmt_spread(speed[name], 2) + "x" if name in speed else "1",
            ]
        )
    return md_table(headers, body)


def multiturn_plot(result: dict[str, Any], path: Any) -> Any:
    """Per-turn seconds of each variant as a line over the conversation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8))
    for name, ss in result["samples"].items():
        ax.plot(range(1, len(ss) + 1), [s[0] for s in ss], label=name)
    ax.set_xlabel("turn")
    ax.set_ylabel("seconds")
    ax.set_title(f"{result['turns']}-turn conversation: seconds per turn", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
