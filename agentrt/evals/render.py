"""Rendering chats to token ids: the tokenizer's chat template, or a documented plain fallback.

Fallback (a tokenizer without `chat_template`): each message is a block `Role: content`
(System, User, Assistant, Tool) separated by a blank line; tool schemas follow the system
block as one JSON object per line after `Tools (call one as <tool_call>{...}</tool_call>):`;
the generation prompt is `Assistant:`. Generation stops at EOS or when the reply starts a
new block (`\\n\\nUser:` / `\\n\\nTool:` / `\\n\\nSystem:`).
"""

from __future__ import annotations

import json
from typing import Any

from agentrt.evals.tasks.base import Message, TokenCounter

PLAIN_ROLES = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}
PLAIN_STOPS = ("\n\nUser:", "\n\nTool:", "\n\nSystem:")
# end-of-turn tokens of common chat formats (ChatML, Llama 3, Gemma, Mistral)
TURN_END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "</s>")


def has_template(tokenizer: Any) -> bool:
    """Whether the tokenizer carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def plain_text(
    messages: list[Message], tools: list[dict] | None, *, add_generation_prompt: bool
) -> str:
    """The fallback rendering (see the module docstring)."""
    blocks = []
    for i, msg in enumerate(messages):
        blocks.append(f"{PLAIN_ROLES.get(msg['role'], msg['role'].title())}: {msg['content']}")
        if tools and i == 0 and msg["role"] == "system":
            blocks.append(_plain_tools(tools))
    if tools and (not messages or messages[0]["role"] != "system"):
        blocks.insert(0, _plain_tools(tools))
    text = "\n\n".join(blocks)
    if add_generation_prompt:
        text += "\n\nAssistant:"
    return text


def _plain_tools(tools: list[dict]) -> str:
    lines = [json.dumps(t, ensure_ascii=False) for t in tools]
    return "Tools (call one as <tool_call>{...}</tool_call>):\n" + "\n".join(lines)


def render_text(
    tokenizer: Any,
    messages: list[Message],
    tools: list[dict] | None = None,
    *,
    add_generation_prompt: bool = True,
) -> str:
    """The chat as text: the tokenizer's template, or the plain fallback."""
    if has_template(tokenizer):
        kwargs = {"tools": tools} if tools else {}
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
        )
    return plain_text(messages, tools, add_generation_prompt=add_generation_prompt)


def render_ids(
    tokenizer: Any,
    messages: list[Message],
    tools: list[dict] | None = None,
    *,
    add_generation_prompt: bool = True,
) -> list[int]:
    """Token ids of the chat (template with tokenize=True, or the fallback text encoded)."""
    if has_template(tokenizer):
        kwargs = {"tools": tools} if tools else {}
        out = tokenizer.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=add_generation_prompt, **kwargs
        )
        ids = out["input_ids"] if hasattr(out, "keys") else out
        return [int(i) for i in ids]
    text = plain_text(messages, tools, add_generation_prompt=add_generation_prompt)
    return [int(i) for i in tokenizer.encode(text)]


def token_counter(tokenizer: Any) -> TokenCounter:
    """Counts prompt tokens (generation prompt included) the way the runner renders them."""

    def count(messages: list[Message], tools: list[dict] | None) -> int:
        return len(render_ids(tokenizer, messages, tools))

    return count


def stop_token_ids(tokenizer: Any, model: Any = None) -> set[int]:
    """EOS, the template's end-of-turn tokens and the model's generation-config EOS ids."""
    ids: set[int] = set()
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    ids.update(int(vocab[t]) for t in TURN_END_TOKENS if t in vocab)
    gen = getattr(getattr(model, "hf", None), "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    if eos is not None:
        ids.update(int(e) for e in (eos if isinstance(eos, list | tuple) else [eos]))
    return ids


def stop_strings(tokenizer: Any) -> tuple[str, ...]:
    """Strings that end a reply: the fallback's next-block markers (none with a template)."""
    return () if has_template(tokenizer) else PLAIN_STOPS


def delta_ids(
    tokenizer: Any, cached: list[int], messages: list[Message], tools: list[dict] | None
) -> list[int] | None:
    """The ids to prefill after `cached` so the cache holds the rendered chat (+ generation prompt).

    Token prefix first (the rendering starts with exactly the cached ids); else text
    prefix (the cached ids decode to a prefix of the rendered text, e.g. the model chose a
    non-canonical tokenisation), encoding only the new text. None when the template
    rewrites history, which would need a re-prefill.
    """
    full = render_ids(tokenizer, messages, tools)
    if full[: len(cached)] == cached:
        return full[len(cached) :]
    text = render_text(tokenizer, messages, tools)
    bos = getattr(tokenizer, "bos_token_id", None)
    if (
        cached
        and bos is not None
        and cached[0] == bos
        and not text.startswith(str(tokenizer.bos_token))
    ):
        cached = cached[1:]  # the fallback's encode() added BOS; the text has none
    done = tokenizer.decode(cached, skip_special_tokens=False)
    if not text.startswith(done):
        return None
    return [int(i) for i in tokenizer.encode(text[len(done) :], add_special_tokens=False)]
