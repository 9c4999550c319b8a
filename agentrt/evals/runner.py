"""`evaluate`: the task suite served through the paged cache under each policy and compression."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from agentrt.dms.policies import make_policy
from agentrt.errors import ConfigError
from agentrt.evals.generation import (
    BLOCK_SIZE,
    Conversation,
    GenerationConfig,
    conversation_bound,
    serve,
)
from agentrt.evals.options import BASELINES, MATCH_SKIPPED, EvalSpec, matched_conditions
from agentrt.evals.render import token_counter
from agentrt.evals.result import Condition, EvalResult, Row
from agentrt.evals.tasks import TASKS, Item, item_seed


def slot_budget(length: int, cr: float) -> int:
    """Slots per stream that compress `length` tokens by `cr`: max(1, round(length / cr))."""
    return max(1, round(length / cr))


def build_policy(cond: Condition, length: int) -> tuple[Any, int | None, int | None]:
    """(policy for model.step, cache window or None for the model's own, slot budget)."""
    if cond.policy == "dms":
        return None, None, None
    if cond.policy == "dense":
        policy = make_policy("dense")
        return policy, policy.window, None
    assert cond.cr is not None, cond
    budget = slot_budget(length, cond.cr)
    if cond.policy == "streaming":
        policy = make_policy("streaming", budget=budget, sinks=min(4, budget - 1))
    elif cond.policy == "h2o":
        policy = make_policy("h2o", budget=budget, recent=budget // 2)
    else:
        policy = make_policy(cond.policy, budget=budget)
    return policy, policy.window, budget


def make_items(spec: EvalSpec, tokenizer: Any) -> dict[tuple[str, int], list[Item]]:
    """The items of every (task, length): seeds from (seed, task, length, index), split 'eval'."""
    count = token_counter(tokenizer)
    items: dict[tuple[str, int], list[Item]] = {}
    for task in spec.tasks:
        for length in spec.lengths:
            try:
                items[task, length] = [
                    TASKS[task].generate(item_seed(spec.seed, task, length, i), length, count)
                    for i in range(spec.n_items)
                ]
            except ConfigError as err:
                raise ConfigError(f"task {task}: {err.message}", hint=err.hint) from err
    return items


def evaluate(
    model: Any,
    tokenizer: Any,
    *,
    tasks: Sequence[str],
    lengths: Sequence[int],
    policies: Sequence[str],
    crs: Sequence[float],
    n_items: int = 20,
    seed: int = 0,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    prefill_chunk: int = 512,
    progress: bool = False,
    match_dms: bool = False,
) -> EvalResult:
    """Accuracy and achieved compression per task × length × policy × CR (greedy decoding).

    `match_dms` also runs every baseline at the ratio DMS achieved on the same task and
    length (rounded to 2 decimals), so the comparison is at equal compression: DMS runs
    first there.

    Items are rendered with the tokenizer's chat template (plain fallback without one),
    prefilled in chunks of `prefill_chunk` tokens and decoded greedily token by token,
    `batch_size` items per ragged step; agent items run their tool calls and continue (up
    to 3 assistant turns). TOVA and H2O evict once per prefill chunk (see their docs).
    """
    spec = EvalSpec(
        tasks=tuple(tasks),
        lengths=tuple(int(n) for n in lengths),
        policies=tuple(policies),
        crs=tuple(float(c) for c in crs),
        n_items=n_items,
        seed=seed,
        max_new_tokens=max_new_tokens,
        match_dms=match_dms,
    )
    gen = GenerationConfig(max_new_tokens=max_new_tokens, prefill_chunk=prefill_chunk)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r} must be an int >= 1")
    result = EvalResult(config=_config(spec, model, batch_size))
    result.config["prefill_chunk"] = prefill_chunk
    conditions = spec.conditions()
    if "dms" in spec.policies and not model.evicting:
        conditions = [c for c in conditions if c.policy != "dms"]
        result.notes.append(
            "dms skipped: the model makes no DMS decisions (a plain model); "
            "retrofit it with `agentrt retrofit` first"
        )
    items = make_items(spec, tokenizer)
    _note_long_prompts(result, items, model, gen)
    from tqdm.auto import tqdm

    matched = [p for p in dict.fromkeys(spec.policies) if p in BASELINES] if spec.match_dms else []
    if matched and not any(c.policy == "dms" for c in conditions):
        matched = []  # a plain model has no DMS ratio to match
        result.notes.append(MATCH_SKIPPED)
    total = sum(len(v) for v in items.values()) * (len(conditions) + len(matched))
    with tqdm(total=total, desc="eval", unit="item", disable=not progress) as bar:
        for (task, length), task_items in items.items():
            queue = sorted(conditions, key=lambda c: c.policy != "dms") if matched else conditions
            for cond in queue:
                records = _run_condition(
                    model, tokenizer, task_items, cond, length, gen, batch_size, bar
                )
                result.items.extend(records)
                result.rows.append(_row(task, length, cond, records))
                if cond.policy == "dms" and matched:
                    fresh = matched_conditions(matched, result.rows[-1].achieved_cr, queue)
                    queue.extend(fresh)
                    bar.total -= (len(matched) - len(fresh)) * len(task_items)
                    bar.refresh()
    return result


def _run_condition(
    model: Any,
    tokenizer: Any,
    items: list[Item],
    cond: Condition,
    length: int,
    gen: GenerationConfig,
    batch_size: int,
    bar: Any,
) -> list[dict[str, Any]]:
    """Serve the items under one condition, `batch_size` at a time; one record per item."""
    records: list[dict[str, Any]] = []
    streams = model.arch.num_layers * model.arch.num_kv_heads
    for lo in range(0, len(items), batch_size):
        chunk = items[lo : lo + batch_size]
        policy, _window, budget = build_policy(cond, length)
        bounds = [conversation_bound(item.prompt_tokens, item, gen) for item in chunk]
        blocks = sum(streams * (math.ceil(b / BLOCK_SIZE) + 1) for b in bounds)
        convs = serve(
            model, chunk, policy=policy, gen=gen, num_blocks=blocks, tokenizer=tokenizer,
            on_done=lambda _: bar.update(1),
        )  # fmt: skip
        records.extend(_record(c, cond, length, budget) for c in convs)
    return records


def _record(conv: Conversation, cond: Condition, length: int, budget: int | None) -> dict[str, Any]:
    """One item under one condition: score, compression and the replies (synthetic text only)."""
    item = conv.item
    task = TASKS[item.task]
    valid = task.tool_calls_valid(conv.replies) if hasattr(task, "tool_calls_valid") else None
    return {
        "task": item.task,
        "length": length,
        "policy": cond.policy,
        "cr": cond.cr,
        "budget": budget,
        "id": item.id,
        "score": task.score(item, conv.replies),
        "answer": item.answer,
        "tool_calls_valid": valid,
        "prompt_tokens": item.prompt_tokens,
        "tokens": conv.stats["tokens"],
        "slots": conv.stats["slots"],
        "compression_ratio": conv.stats["compression_ratio"],
        "replies": conv.replies,
        "error": conv.error,
    }


def _row(task: str, length: int, cond: Condition, records: list[dict[str, Any]]) -> Row:
    """Aggregate the records of one (task, length, condition)."""
    n = len(records)
    valid = [r["tool_calls_valid"] for r in records if r["tool_calls_valid"] is not None]
    return Row(
        task=task,
        length=length,
        policy=cond.policy,
        cr=cond.cr,
        budget=records[0]["budget"] if records else None,
        n=n,
        accuracy=sum(r["score"] for r in records) / n,
        achieved_cr=sum(r["compression_ratio"] for r in records) / n,
        prompt_tokens=sum(r["prompt_tokens"] for r in records) / n,
        tool_calls_valid=sum(valid) / len(valid) if valid else None,
        errors=sum(r["error"] is not None for r in records),
    )


def _note_long_prompts(result: EvalResult, items: dict, model: Any, gen: GenerationConfig) -> None:
    """Warn when a prompt and its first reply run past the model's max_position_embeddings."""
    limit = model.arch.max_positions
    for (task, length), task_items in items.items():
        longest = max(it.prompt_tokens for it in task_items) + gen.max_new_tokens
        if limit and longest > limit:
            result.notes.append(
                f"{task} at {length}: prompt + reply reach {longest} tokens, beyond the "
                f"model's max_position_embeddings ({limit})"
            )


def _config(spec: EvalSpec, model: Any, batch_size: int) -> dict[str, Any]:
    """The run's settings for the JSON."""
    source = getattr(model, "source_dir", None)
    return {
        "model": str(source) if source else None,
        "tasks": list(spec.tasks),
        "lengths": list(spec.lengths),
        "policies": list(spec.policies),
        "crs": list(spec.crs),
        "match_dms": spec.match_dms,
        "n_items": spec.n_items,
        "seed": spec.seed,
        "max_new_tokens": spec.max_new_tokens,
        "batch_size": batch_size,
        "dms_window": model.dms.window_size if model.evicting else None,
        "device": str(model.device),
        "dtype": str(model.dtype).replace("torch.", ""),
    }
