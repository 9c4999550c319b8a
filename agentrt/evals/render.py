"""Rendering eval chats to token ids, through the agent loop's `ChatFormat`.

Tokenizers without a chat template use the plain format documented in
`agentrt.agent.chat` (`Role: content` blocks; tools after the system block; generation
prompt `Assistant:`; replies stop when they start a new block).
"""

from __future__ import annotations

from typing import Any

from agentrt.agent.chat import PLAIN_STOPS, TURN_END_TOKENS, ChatFormat, plain_text
from agentrt.evals.tasks.base import Message, TokenCounter


def has_template(tokenizer: Any) -> bool:
    """Whether the tokenizer carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def render_text(
    tokenizer: Any,
    messages: list[Message],
    tools: list[dict] | None = None,
    *,
    add_generation_prompt: bool = True,
) -> str:
    """The chat as text: the tokenizer's template, or the plain fallback."""
    return ChatFormat(tokenizer, list(tools or [])).render(
        messages, add_generation_prompt=add_generation_prompt
    )


def render_ids(
    tokenizer: Any,
    messages: list[Message],
    tools: list[dict] | None = None,
    *,
    add_generation_prompt: bool = True,
) -> list[int]:
    """Token ids of the chat, as the agent loop prefills it for a new conversation."""
    fmt = ChatFormat(tokenizer, list(tools or []))
    return fmt.prompt(messages, add_generation_prompt=add_generation_prompt).ids


def token_counter(tokenizer: Any) -> TokenCounter:
    """Counts prompt tokens (generation prompt included) the way the runner renders them."""

    def count(messages: list[Message], tools: list[dict] | None) -> int:
        return len(render_ids(tokenizer, messages, tools))

    return count


def stop_token_ids(tokenizer: Any, model: Any = None) -> set[int]:
    """EOS, the template's end-of-turn tokens and the model's generation-config EOS ids."""
    gen = getattr(getattr(model, "hf", None), "generation_config", None)
    return ChatFormat(tokenizer).stop_token_ids(getattr(gen, "eos_token_id", None))


def stop_strings(tokenizer: Any) -> tuple[str, ...]:
    """Strings that end a reply: the fallback's next-block markers (none with a template)."""
    return ChatFormat(tokenizer).stop_strings()


__all__ = [
    "PLAIN_STOPS",
    "TURN_END_TOKENS",
    "has_template",
    "plain_text",
    "render_ids",
    "render_text",
    "stop_strings",
    "stop_token_ids",
    "token_counter",
]
