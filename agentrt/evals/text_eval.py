"""`evaluate_text`: teacher-forced perplexity of the user's text under each policy, and KL to dense.

All conditions advance through the text in lockstep, 512 tokens at a time, each on its own
cache; only one chunk of logits per condition is alive at once, so memory stays bounded
for long texts and large vocabularies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from agentrt.dms.serving import StepItem
from agentrt.errors import ConfigError
from agentrt.evals.options import BASELINES, MATCH_SKIPPED, POLICY_NAMES, matched_conditions
from agentrt.evals.result import Condition, EvalResult, TextRow
from agentrt.evals.runner import BLOCK_SIZE, build_policy

CHUNK = 512


def evaluate_text(
    model: Any,
    tokenizer: Any,
    text: str,
    *,
    lengths: Sequence[int],
    policies: Sequence[str],
    crs: Sequence[float],
    chunk: int = CHUNK,
    progress: bool = False,
    result: EvalResult | None = None,
    match_dms: bool = False,
) -> EvalResult:
    """Perplexity and KL(dense ‖ policy) on the first L tokens of `text`, for each L in lengths.

    `match_dms` also scores every baseline at the ratio DMS achieved on that length.

    A text shorter than L is scored whole (once, at its own length). Position t predicts
    token t + 1; the KL is averaged over those T − 1 positions, in nats. The text is fed
    `chunk` tokens per step: window/streaming/DMS masks are exact inside a chunk, while
    TOVA/H2O evict once per chunk (chunk=1 gives their per-token rule, slowly).
    """
    if not isinstance(chunk, int) or chunk < 1:
        raise ConfigError(f"chunk={chunk!r} must be an int >= 1")
    unknown = [p for p in policies if p not in POLICY_NAMES]
    if unknown:
        raise ConfigError(
            f"unknown policy {unknown}", hint=f"choose from {', '.join(POLICY_NAMES)}"
        )
    ids = [int(i) for i in tokenizer.encode(text)]
    if len(ids) < 2:
        raise ConfigError("the --text file has fewer than 2 tokens", hint="pass a longer text")
    result = result or EvalResult()
    result.config.setdefault("text_tokens", len(ids))
    result.config["text_chunk"] = chunk
    conds = [Condition("dense", 1.0)]
    for p in dict.fromkeys(policies):
        if p == "dms":
            if model.evicting:
                conds.append(Condition("dms", None))
            else:
                result.notes.append("text: dms skipped (the model makes no DMS decisions)")
        elif p != "dense":
            conds.extend(Condition(p, float(c)) for c in crs)
    scored = sorted({min(int(n), len(ids)) for n in lengths})
    if any(int(n) > len(ids) for n in lengths):
        result.notes.append(
            f"text: the file has {len(ids)} tokens; a longer length scores it whole"
        )
    from tqdm.auto import tqdm

    result.config["match_dms"] = match_dms
    matched = [p for p in dict.fromkeys(policies) if p in BASELINES] if match_dms else []
    if matched and not model.evicting:
        result.notes.append(f"text: {MATCH_SKIPPED}")
    for n in tqdm(scored, desc="text", unit="length", disable=not progress):
        rows = _score_length(model, ids[:n], conds, chunk)
        dms_rows = [r for r in rows if r.policy == "dms"]
        fresh = matched_conditions(matched, dms_rows[0].achieved_cr, conds) if dms_rows else []
        if fresh:  # dense first: the KL reference
            rows += _score_length(model, ids[:n], [Condition("dense", 1.0), *fresh], chunk)[1:]
        result.text_rows.extend(r for r in rows if r.policy != "dense" or "dense" in policies)
    return result


def _score_length(model: Any, ids: list[int], conds: list[Condition], chunk: int) -> list[TextRow]:
    """Rows for every condition on ids [T] (conds[0] is dense, the KL reference)."""
    total = len(ids)
    streams = model.arch.num_layers * model.arch.num_kv_heads
    pool = model.make_pool(
        num_blocks=len(conds) * streams * (math.ceil(total / BLOCK_SIZE) + 2), block_size=BLOCK_SIZE
    )
    setups = [build_policy(c, total) for c in conds]
    caches = [model.new_cache(pool, window=window) for _, window, _ in setups]
    nll = [0.0] * len(conds)
    kl = [0.0] * len(conds)
    targets = torch.tensor(ids, dtype=torch.long)
    with torch.no_grad():
        for lo in range(0, total, chunk):
            part = targets[lo : lo + chunk]
            nxt = targets[lo + 1 : lo + chunk + 1]  # [m] next tokens (m = len(part) or one less)
            if nxt.numel() == 0:  # the last token predicts nothing; it only fills the cache
                for (policy, _, _), cache in zip(setups, caches, strict=True):
                    model.step([StepItem(cache, part)], policy=policy)
                break
            ref = None
            for i, ((policy, _, _), cache) in enumerate(zip(setups, caches, strict=True)):
                logits = model.step([StepItem(cache, part, all_logits=True)], policy=policy)[0]
                logp = torch.log_softmax(logits[: nxt.numel()].float(), dim=-1)  # [m, V]
                nll[i] -= float(logp.gather(1, nxt[:, None].to(logp.device)).sum())
                if ref is None:
                    ref = logp
                kl[i] += float((ref.exp() * (ref - logp)).sum())
    positions = total - 1
    rows = []
    for cond, (_, _, budget), cache, n_i, k_i in zip(conds, setups, caches, nll, kl, strict=True):
        stats = cache.stats()
        cache.free()
        mean = n_i / positions
        rows.append(
            TextRow(
                length=total,
                policy=cond.policy,
                cr=cond.cr,
                budget=budget,
                ppl=math.exp(mean),
                nll=mean,
                kl=k_i / positions,
                achieved_cr=stats["compression_ratio"],
            )
        )
    return rows
