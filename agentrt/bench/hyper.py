"""`agentrt bench hyper`: majority-of-N DMS chains vs one dense chain, with the KV bytes each holds.

Task: sums with a shared few-shot prefix (worked examples), so every problem is a
copy-on-write fork of one prefilled prefix and the sequences run past the DMS window
(where eviction starts). Per problem the DMS engine prefills the question once, forks
N_max chains (seeds seed, seed+1, ...) that decode in one batch, and majority-of-N for
N < N_max uses chains 0..N-1: chain i does not depend on how many siblings it has (the
engine's exactness tests), so one batch of N_max answers every N. The dense engine (same
weights, no eviction) runs one chain with the first seed. Every reply starts with the
prefilled words "The answer is", so the number comes next.

KV bytes are read from the pool: a chain's `kv_bytes` counts every block it references
(the shared prefix included); `pool bytes for N` = prefix blocks once + each chain's own
blocks; `N x chain bytes` is the cost of N chains that share nothing.
"""

from __future__ import annotations

import dataclasses
import platform
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ANSWER_PATTERN = r"(-?\d+)"
SYSTEM = "Answer with the number only."
ANSWER_PREFIX = "The answer is"  # the reply starts with it (prefilled), so the number follows


@dataclass(frozen=True)
class Problem:
    """One question and its answer."""

    question: str
    answer: str


def few_shot(examples: int, seed: int, top: int = 9) -> str:
    """Worked sums shown before every question (the shared, prefilled-once prefix)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(examples):
        a, b = rng.randint(1, top), rng.randint(1, top)
        lines.append(f"{a} + {b} = {a + b}")
    return "Worked examples:\n" + "\n".join(lines) + "\n\nNow the question."


def make_problems(count: int, seed: int, top: int = 9) -> list[Problem]:
    """`count` sums a + b with 1 <= a, b <= top, reproducible from `seed`."""
    rng = random.Random(seed + 1)
    out = []
    for _ in range(count):
        a, b = rng.randint(1, top), rng.randint(1, top)
        out.append(Problem(f"What is {a} + {b}?", str(a + b)))
    return out


def _common_prefix(seqs: list[list[int]]) -> int:
    n = min(len(s) for s in seqs)
    for i in range(n):
        if any(s[i] != seqs[0][i] for s in seqs):
            return i
    return n


def _majority(answers: list[str | None]) -> str | None:
    from agentrt.engine.vote import pick

    return answers[pick(answers, [0] * len(answers), "majority")]


def run_hyper_bench(
    model: Any,
    *,
    problems: int = 12,
    ns: tuple[int, ...] = (1, 2, 4, 8),
    examples: int = 50,
    max_operand: int = 9,
    max_new_tokens: int = 4,
    temperature: float = 0.8,
    top_p: float = 0.95,
    seed: int = 0,
    kv_budget: str = "256MiB",
    progress: bool = True,
) -> dict[str, Any]:
    """Accuracy of majority-of-N DMS chains and of one dense chain, with their KV bytes."""
    from agentrt.agent.chat import ChatFormat
    from agentrt.dms.policies import make_policy
    from agentrt.engine import Engine, SamplingParams
    from agentrt.engine.vote import extract_answer

    if model.tokenizer is None:
        from agentrt.errors import ConfigError

        raise ConfigError("the hyper-scaling benchmark needs a model with a tokenizer")
    fmt = ChatFormat(model.tokenizer)
    shots = few_shot(examples, seed, max_operand)
    probs = make_problems(problems, seed, max_operand)
    prompts = [
        fmt.prompt(
            [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"{shots}\n{p.question}"},
            ],
            add_generation_prompt=True,
        ).ids
        + fmt.encode(ANSWER_PREFIX)
        for p in probs
    ]
    cut = min(_common_prefix(prompts), min(len(p) for p in prompts) - 1)  # each keeps a question
    n_max = max(ns)
    params = SamplingParams(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        stop_token_ids=tuple(sorted(fmt.stop_token_ids())),
    )
    home = tempfile.mkdtemp(prefix="agentrt-bench-hyper-")  # the engines' catalog, not the user's
    where = {"home": home, "db": f"sqlite:///{home}/bench.db"}
    engines = {
        "dms": Engine(model, kv_budget=kv_budget, **where),
        "dense": Engine(model, kv_budget=kv_budget, policy=make_policy("dense"), **where),
    }
    bases = {}
    for name, eng in engines.items():
        base = eng.new_session(f"prefix-{name}")
        base.prefill(prompts[0][:cut])
        bases[name] = base
    rows: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    bar = _bar(progress, len(probs))
    try:
        for k, (prob, ids) in enumerate(zip(probs, prompts, strict=True)):
            row: dict[str, Any] = {"question": prob.question, "expected": prob.answer}
            s = bases["dms"].fork()
            s.prefill(ids[cut:])
            seeded = dataclasses.replace(params, seed=seed + 1000 * k)
            res = s.sample_parallel(
                n_max, params=seeded, answer_pattern=ANSWER_PATTERN, keep="none"
            )
            row["dms"] = res.as_dict()
            row["dms"]["chain_tokens"] = [len(c.token_ids) for c in res.chains]
            d = bases["dense"].fork()
            d.prefill(ids[cut:])
            toks = list(d.generate(params=seeded))  # the same seed as DMS chain 0
            dense_stats = d.stats()
            text = model.tokenizer.decode(toks, skip_special_tokens=True)
            row["dense"] = {
                "answer": extract_answer(text, ANSWER_PATTERN),
                "text": text,
                "kv_bytes": int(dense_stats["kv_bytes"]),
                "tokens": int(dense_stats["tokens"]),
                "compression_ratio": float(dense_stats["compression_ratio"]),
            }
            d.close()
            s.close()
            rows.append(row)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        for eng in engines.values():
            eng.close()
        shutil.rmtree(home, ignore_errors=True)
    return {
        "bench": "hyper",
        "device": str(model.device),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "dtype": str(model.dtype),
        "dms": model.dms.to_hf_dict() if model.dms is not None else None,
        "task": f"sums a + b (1..{max_operand}) after {examples} worked examples "
        f"(shared prefix, {cut} tokens)",
        "problems": len(probs),
        "ns": list(ns),
        "sampling": {"temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens},
        "seconds": time.perf_counter() - t_start,
        "summary": summarize(rows, ns),
        "rows": rows,
    }


def _bar(progress: bool, total: int) -> Any:
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="problems", unit="problem")


def summarize(rows: list[dict[str, Any]], ns: tuple[int, ...]) -> dict[str, Any]:
    """Per N: accuracy of the majority answer and mean KV bytes; the dense chain's the same."""
    count = max(1, len(rows))
    dense_bytes = sum(r["dense"]["kv_bytes"] for r in rows) / count
    dense_acc = sum(r["dense"]["answer"] == r["expected"] for r in rows) / count
    per_n = []
    for n in ns:
        correct, pool, unshared, chain = 0, 0.0, 0.0, 0.0
        for r in rows:
            chains = r["dms"]["chains"][:n]
            correct += _majority([c["answer"] for c in chains]) == r["expected"]
            pool += r["dms"]["prefix_bytes"] + sum(c["kv_bytes_own"] for c in chains)
            unshared += sum(c["kv_bytes"] for c in chains)
            chain += sum(c["kv_bytes"] for c in chains) / n
        per_n.append(
            {
                "n": n,
                "accuracy": correct / count,
                "pool_bytes": pool / count,  # prefix once + each chain's own blocks
                "unshared_bytes": unshared / count,  # N chains that share nothing
                "chain_bytes": chain / count,
                "pool_vs_dense": pool / count / dense_bytes if dense_bytes else None,
                "unshared_vs_dense": unshared / count / dense_bytes if dense_bytes else None,
            }
        )
    crs = [c["compression_ratio"] for r in rows for c in r["dms"]["chains"]]
    return {
        "dense_accuracy": dense_acc,
        "dense_chain_bytes": dense_bytes,
        "dms_compression_ratio": sum(crs) / max(1, len(crs)),
        "dms_single_chain_accuracy": sum(
            c["answer"] == r["expected"] for r in rows for c in r["dms"]["chains"]
        )
        / max(1, len(crs)),
        "per_n": per_n,
    }


def format_table(result: dict[str, Any]) -> str:
    """The summary as a Markdown table."""
    s = result["summary"]
    lines = [
        "| chains | cache | accuracy | KV bytes held (prefix once) | vs dense | N x chain bytes (no sharing) | vs dense |",
        "|---:|---|---:|---:|---:|---:|---:|",
        f"| 1 | dense | {s['dense_accuracy']:.2f} | {s['dense_chain_bytes'] / 2**20:.2f} MiB | 1.00 "
        f"| {s['dense_chain_bytes'] / 2**20:.2f} MiB | 1.00 |",
    ]
    for p in s["per_n"]:
        lines.append(
            f"| {p['n']} | DMS, majority | {p['accuracy']:.2f} | {p['pool_bytes'] / 2**20:.2f} MiB "
            f"| {p['pool_vs_dense']:.2f} | {p['unshared_bytes'] / 2**20:.2f} MiB "
            f"| {p['unshared_vs_dense']:.2f} |"
        )
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> Path:
    """Accuracy vs N (DMS majority, dense line) and KV bytes vs N relative to the dense chain."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["summary"]
    ns = [p["n"] for p in s["per_n"]]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    ax1.plot(ns, [p["accuracy"] for p in s["per_n"]], "o-", label="DMS, majority of N")
    ax1.axhline(s["dense_accuracy"], color="grey", linestyle="--", label="one dense chain")
    ax1.set_xscale("log", base=2)
    ax1.set_xticks(ns, [str(n) for n in ns])
    ax1.set_xlabel("chains N")
    ax1.set_ylabel("accuracy")
    ax1.set_ylim(0, 1)
    ax1.set_title(f"accuracy ({result['problems']} problems)")
    ax1.legend()
    ax2.plot(ns, [p["pool_vs_dense"] for p in s["per_n"]], "o-", label="N DMS chains, prefix once")
    ax2.plot(
        ns, [p["unshared_vs_dense"] for p in s["per_n"]], "s--", label="N DMS chains, unshared"
    )
    ax2.axhline(1.0, color="grey", linestyle="--", label="one dense chain")
    ax2.set_xscale("log", base=2)
    ax2.set_xticks(ns, [str(n) for n in ns])
    ax2.set_xlabel("chains N")
    ax2.set_ylabel("KV bytes / dense chain")
    ax2.set_title(f"KV memory (DMS CR {s['dms_compression_ratio']:.2f}x)")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


__all__ = ["Problem", "few_shot", "format_table", "make_problems", "plot", "run_hyper_bench"]
