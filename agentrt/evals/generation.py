"""Serving eval items through the agent loop: one Engine per batch, one session + Agent per item.

Items of a batch run in threads; the engine packs their prefill chunks and decode tokens
into shared ragged steps (continuous batching). Decoding is greedy; agent items run their
tool calls through `agentrt.tools` and continue, up to `max_turns` assistant turns.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from agentrt.errors import ConfigError
from agentrt.evals.tasks.agent_tools import MAX_RESULT_CHARS, registry
from agentrt.evals.tasks.base import Item

MAX_TOOL_DELTA = 1024  # tokens a tool turn may add (tool results are capped at 800 chars)
BLOCK_SIZE = 16


@dataclass(eq=False, repr=False)
class Conversation:
    """One served item: its assistant replies, the cache stats at the end, and any error."""

    item: Item
    replies: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def __repr__(self) -> str:
        """Counts only (conversations carry prompt text)."""
        return f"Conversation({self.item.id!r}, turns={len(self.replies)})"


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


def _serve_one(engine: Any, index: int, item: Item, gen: GenerationConfig) -> Conversation:
    """One item through the agent loop on its own session (freed at the end)."""
    from agentrt.agent import Agent, Limits
    from agentrt.engine import SamplingParams

    messages = [dict(m) for m in item.messages]
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    users = [m for m in messages if m["role"] == "user"]
    if len(users) != 1 or len(messages) != len(users) + (system is not None):
        raise ConfigError(f"item {item.id}: the prompt must be [system,] user")
    tools = None
    if item.tools:
        names = [t["function"]["name"] for t in item.tools]
        tools = registry(item.env.get("files", {}), names)
    session = engine.new_session(f"item-{index}")
    conv = Conversation(item)
    try:
        agent = Agent(
            session,
            tools=tools,
            system=system,
            sampling=SamplingParams(max_new_tokens=gen.max_new_tokens),
            limits=Limits(
                max_steps=gen.max_turns if tools else 1,
                max_new_tokens=gen.max_new_tokens,
                max_tool_result_chars=MAX_RESULT_CHARS,
            ),
            stop_at_call_end=False,
        )
        res = agent.ask(users[0]["content"])
        conv.replies = [m["content"] for m in agent.messages if m["role"] == "assistant"]
        if res.finish_reason == "context_limit":
            conv.error = res.message
        conv.stats = session.stats()
    finally:
        session.close()
    return conv


def serve(
    model: Any,
    items: list[Item],
    *,
    policy: Any,
    gen: GenerationConfig,
    num_blocks: int,
    tokenizer: Any = None,
    on_done: Callable[[Conversation], None] | None = None,
) -> list[Conversation]:
    """Run every item to its end, all at once in shared engine steps; results in item order."""
    from agentrt.engine import Engine, SchedulerConfig

    engine = Engine(
        model,
        num_blocks=num_blocks,
        block_size=BLOCK_SIZE,
        policy=policy,
        scheduler=SchedulerConfig(prefill_chunk=gen.prefill_chunk),
    )
    if tokenizer is not None:  # the caller's tokenizer (e.g. one without a chat template)
        engine.tokenizer = tokenizer

    def run(pair: tuple[int, Item]) -> Conversation:
        conv = _serve_one(engine, pair[0], pair[1], gen)
        if on_done is not None:
            on_done(conv)
        return conv

    try:
        if len(items) == 1:
            return [run((0, items[0]))]
        with ThreadPoolExecutor(max_workers=len(items)) as pool:
            return list(pool.map(run, enumerate(items)))
    finally:
        engine.close()
