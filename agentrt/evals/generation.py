"""Serving eval conversations on the paged cache: batched chunked prefill, greedy decode, tool turns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from agentrt.dms.serving import StepItem
from agentrt.errors import ConfigError
from agentrt.evals.render import delta_ids, render_ids, stop_strings, stop_token_ids
from agentrt.evals.tasks.agent_tools import parse_tool_calls, run_tool
from agentrt.evals.tasks.base import Item, Message

MAX_TOOL_DELTA = 1024  # tokens a tool turn may add (tool results are capped at 800 chars)


@dataclass(eq=False, repr=False)
class Conversation:
    """One item being served: its cache, the chat so far and the reply being generated."""

    item: Item
    cache: Any  # SessionCache
    messages: list[Message]
    pending: list[int]  # ids still to prefill (a prompt, a tool turn, or the last sampled token)
    fed: list[int] = field(default_factory=list)  # ids in the cache, in order
    reply: list[int] = field(default_factory=list)  # ids sampled in the current turn
    replies: list[str] = field(default_factory=list)  # finished assistant turns
    done: bool = False
    error: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)  # cache.stats() at the end

    def __repr__(self) -> str:
        """Counts only (conversations carry prompt text)."""
        return f"Conversation({self.item.id!r}, fed={len(self.fed)}, turns={len(self.replies)})"


@dataclass(frozen=True)
class GenerationConfig:
    """How conversations are served: chunk size, reply length, tool turns."""

    max_new_tokens: int = 64  # per assistant turn
    prefill_chunk: int = 512  # tokens per session per step while prefilling
    max_turns: int = 3  # assistant turns of a tool-using item

    def __post_init__(self) -> None:
        bad = [f"{k}={getattr(self, k)!r} must be an int >= 1" for k in
               ("max_new_tokens", "prefill_chunk", "max_turns")
               if not isinstance(getattr(self, k), int) or getattr(self, k) < 1]  # fmt: skip
        if bad:
            raise ConfigError("; ".join(bad))


def conversation_bound(prompt_tokens: int, item: Item, gen: GenerationConfig) -> int:
    """Most tokens a conversation can put in its cache (sizes the pool)."""
    turns = gen.max_turns if item.tools else 1
    return prompt_tokens + turns * (gen.max_new_tokens + 1) + (turns - 1) * MAX_TOOL_DELTA


def start(model: Any, tokenizer: Any, item: Item, pool: Any, window: int | None) -> Conversation:
    """A conversation whose prompt (the item's messages, rendered) is pending prefill."""
    messages = [dict(m) for m in item.messages]
    ids = render_ids(tokenizer, messages, item.tool_list)
    cache = model.new_cache(pool, window=window)
    return Conversation(item=item, cache=cache, messages=messages, pending=ids)


def serve(
    model: Any,
    tokenizer: Any,
    convs: list[Conversation],
    *,
    policy: Any,
    gen: GenerationConfig,
    on_done: Callable[[Conversation], None] | None = None,
) -> None:
    """Run every conversation to its end in shared ragged steps; frees each cache when done."""
    stops = stop_token_ids(tokenizer, model)
    while True:
        active = [c for c in convs if not c.done]
        if not active:
            return
        feeds = [c.pending[: gen.prefill_chunk] for c in active]
        batch = [
            StepItem(c.cache, torch.tensor(f, dtype=torch.long))
            for c, f in zip(active, feeds, strict=True)
        ]
        with torch.no_grad():
            logits = model.step(batch, policy=policy)  # per item [V]
        for conv, feed, row in zip(active, feeds, logits, strict=True):
            conv.fed.extend(feed)
            conv.pending = conv.pending[len(feed) :]
            if conv.pending:
                continue
            token = int(torch.argmax(row))
            conv.reply.append(token)
            if (
                token in stops
                or len(conv.reply) >= gen.max_new_tokens
                or _hit_stop(conv, tokenizer)
            ):
                _finish_turn(conv, tokenizer, stops, gen)
            else:
                conv.pending = [token]
            if conv.done:
                conv.stats = conv.cache.stats()
                conv.cache.free()
                if on_done is not None:
                    on_done(conv)


def _hit_stop(conv: Conversation, tokenizer: Any) -> bool:
    """Whether the reply has started a new block of the plain fallback format."""
    strings = stop_strings(tokenizer)
    if not strings:
        return False
    text = tokenizer.decode(conv.reply, skip_special_tokens=False)
    return any(s in text for s in strings)


def reply_text(ids: list[int], tokenizer: Any, stops: set[int]) -> str:
    """The reply's text without its stop token; in the plain fallback also without the space
    after `Assistant:` and anything from a stop string on (so it renders back the same)."""
    if ids and ids[-1] in stops:
        ids = ids[:-1]
    text = tokenizer.decode(ids, skip_special_tokens=False)
    strings = stop_strings(tokenizer)
    for s in strings:
        text = text.split(s, 1)[0]
    return text[1:] if strings and text.startswith(" ") else text


def _finish_turn(
    conv: Conversation, tokenizer: Any, stops: set[int], gen: GenerationConfig
) -> None:
    """Close the assistant turn; run its tool calls and queue the next turn, or end."""
    text = reply_text(conv.reply, tokenizer, stops)
    conv.replies.append(text)
    conv.reply = []
    item = conv.item
    calls = parse_tool_calls(text) if item.tools else []
    if not calls or len(conv.replies) >= gen.max_turns:
        conv.done = True
        return
    conv.messages.append({"role": "assistant", "content": text})
    files = item.env.get("files", {})
    conv.messages.extend({"role": "tool", "content": run_tool(c, files)} for c in calls)
    delta = delta_ids(tokenizer, conv.fed, conv.messages, item.tool_list)
    if delta is None:
        conv.error = "the chat template rewrote earlier turns (would need a re-prefill)"
    elif not delta or len(delta) > MAX_TOOL_DELTA:
        conv.error = f"the tool turn renders to {len(delta)} tokens (limit {MAX_TOOL_DELTA})"
    else:
        conv.pending = delta
        return
    conv.done = True
