"""Rendering a conversation for the KV cache: the model's chat template, deltas, the prefix check.

The conversation lives in the cache, so each new message is rendered as the *delta* after
what the cache already holds, never as a re-render of the history:

1. render the conversation with the new messages (generation prompt): when the text the
   cache holds is a prefix of it, the new text is the difference (this also closes an
   assistant turn that stopped without its end-of-turn token);
2. otherwise the template rewrites earlier turns (strips reasoning, trims content) or the
   cache's text differs from the rendering: the delta is rendered explicitly — the
   template's end-of-turn text closes the open assistant turn, and the new messages are
   rendered in isolation after the system message.

Tokenizers without a chat template use a documented plain format (`plain_text`). Tool
schemas go through the template's `tools=`; a template that ignores them (SmolLM2's) gets
them in the system message, in the `<tools>` / `<tool_call>` format its model was trained on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from agentrt.errors import ModelLoadError

Message = dict[str, Any]

PLAIN_ROLES = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}
PLAIN_STOPS = ("\n\nUser:", "\n\nTool:", "\n\nSystem:")
# end-of-turn tokens of common chat formats (ChatML, Llama 3, Gemma, Phi, Mistral)
TURN_END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>", "</s>")
_MARK = "\u2063AGENTRT-MARK\u2063"  # text no model emits, to find the template's turn end

TOOLS_PROMPT = (
    "You have access to the following tools:\n<tools>{tools}</tools>\n\n"
    "To call a tool, answer with only the call, in this format:\n"
    '<tool_call>[{{"name": "tool_name", "arguments": {{"argument": "value"}}}}]</tool_call>\n'
    "When you have the answer, reply with it in plain text without a tool call."
)


def plain_text(
    messages: list[Message], tools: list[dict] | None, *, add_generation_prompt: bool
) -> str:
    """The fallback rendering: `Role: content` blocks separated by blank lines; tools after system."""
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


@dataclass
class Delta:
    """New text/ids to prefill and how they were found ("diff" or "explicit")."""

    text: str
    ids: list[int]
    how: str

    def __repr__(self) -> str:
        """Counts only: the text may hold user data."""
        return f"Delta({len(self.ids)} tokens, how={self.how!r})"


@dataclass
class ChatFormat:
    """One model's chat rendering: template (or plain fallback), tools, stop tokens and strings."""

    tokenizer: Any
    tools: list[dict] = field(default_factory=list)
    tools_in_system: bool = False  # set when the template ignores `tools=`

    def __post_init__(self) -> None:
        """Find out whether the template renders tools itself."""
        if self.tools and self.has_template:
            probe = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
            with_tools = self._template(probe, self.tools, add_generation_prompt=False)
            without = self._template(probe, None, add_generation_prompt=False)
            self.tools_in_system = with_tools == without

    @property
    def has_template(self) -> bool:
        """Whether the tokenizer carries a chat template."""
        return bool(getattr(self.tokenizer, "chat_template", None))

    def _template(
        self, messages: list[Message], tools: list[dict] | None, *, add_generation_prompt: bool
    ) -> str:
        kwargs = {"tools": tools} if tools else {}
        try:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
            )
        except Exception as err:  # jinja raises TemplateError and friends
            raise ModelLoadError(
                f"the model's chat template cannot render this conversation: {err}",
                hint="use a model whose template supports system/user/assistant/tool messages",
            ) from err

    def system_message(self, system: str | None) -> Message | None:
        """The system message, with the tool block when the template ignores `tools=`."""
        text = system or ""
        if self.tools and self.tools_in_system:
            block = TOOLS_PROMPT.format(
                tools=json.dumps([t["function"] for t in self.tools], ensure_ascii=False)
            )
            text = f"{text}\n\n{block}" if text else block
        return {"role": "system", "content": text} if text else None

    def render(self, messages: list[Message], *, add_generation_prompt: bool) -> str:
        """The conversation as text: the template (tools passed when it renders them) or plain."""
        tools = self.tools if self.tools and not self.tools_in_system else None
        if not self.has_template:
            return plain_text(messages, tools, add_generation_prompt=add_generation_prompt)
        if not messages and not add_generation_prompt:
            return ""
        return self._template(messages, tools, add_generation_prompt=add_generation_prompt)

    def encode(self, text: str) -> list[int]:
        """Token ids of rendered text (the template's own special tokens, nothing added)."""
        return [int(i) for i in self.tokenizer.encode(text, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        """Text of token ids exactly as fed (special tokens kept, no space clean-up)."""
        return self.tokenizer.decode(
            ids, skip_special_tokens=False, clean_up_tokenization_spaces=False
        )

    def prompt(self, messages: list[Message], *, add_generation_prompt: bool) -> Delta:
        """The first prefill of a conversation: its full rendering."""
        text = self.render(messages, add_generation_prompt=add_generation_prompt)
        bos = getattr(self.tokenizer, "bos_token", None)
        ids = self.encode(text)
        if (
            not self.has_template
            and bos
            and getattr(self.tokenizer, "add_bos_token", False)
            and not text.startswith(bos)
        ):
            ids = [int(self.tokenizer.bos_token_id), *ids]
        return Delta(text, ids, "full")

    def delta(self, cached_ids: list[int], messages: list[Message], new: list[Message]) -> Delta:
        """What to prefill after `cached_ids` (the cache of `messages`) so it holds `new` too.

        The generation prompt is always added: after new messages the model answers.
        """
        cached = self.decode(cached_ids)
        full = self.render(messages + new, add_generation_prompt=True)
        if full.startswith(cached):  # also when the cache ran into the next block (plain)
            text = full[len(cached) :]
            return Delta(text, self.encode(text), "diff")
        text = self._closing(cached_ids, messages) + self._isolated(messages, new)
        return Delta(text, self.encode(text), "explicit")

    def _closing(self, cached_ids: list[int], messages: list[Message]) -> str:
        """The rest of the template's end of the assistant turn the cache holds open.

        When the model stopped on an end-of-turn token, the cache already holds that part.
        """
        if not messages or messages[-1]["role"] != "assistant":
            return ""
        anchor = self._anchor(messages)
        marked = self.render(
            [*anchor, {"role": "assistant", "content": _MARK}], add_generation_prompt=False
        )
        end = marked.split(_MARK, 1)[1] if _MARK in marked else ""
        if cached_ids and cached_ids[-1] in self.stop_token_ids():
            last = self.decode(cached_ids[-1:])
            if end.startswith(last):
                return end[len(last) :]
        return end

    def _anchor(self, messages: list[Message]) -> list[Message]:
        """The leading system message (the template's output for it is the same every time)."""
        anchor = [m for m in messages[:1] if m["role"] == "system"]
        return [*anchor, {"role": "user", "content": "."}]

    def _isolated(self, messages: list[Message], new: list[Message]) -> str:
        """The new messages rendered on their own, after a fixed anchor conversation."""
        anchor = self._anchor(messages)
        before = self.render(anchor, add_generation_prompt=False)
        after = self.render(anchor + new, add_generation_prompt=True)
        if not after.startswith(before):
            raise ModelLoadError(
                "the model's chat template renders new messages in a way that changes earlier "
                "ones, so they cannot be appended to the KV cache",
                hint="use a model whose chat template appends messages",
            )
        return after[len(before) :]

    # -- stopping ----------------------------------------------------------------------
    def stop_token_ids(self, model_eos: Any = None) -> set[int]:
        """EOS, the template's end-of-turn tokens and the model's generation-config EOS ids."""
        tok = self.tokenizer
        ids: set[int] = set()
        if getattr(tok, "eos_token_id", None) is not None:
            ids.add(int(tok.eos_token_id))
        vocab = tok.get_vocab()
        ids.update(int(vocab[t]) for t in TURN_END_TOKENS if t in vocab)
        if model_eos is not None:
            ids.update(
                int(e) for e in (model_eos if isinstance(model_eos, list | tuple) else [model_eos])
            )
        return ids

    def stop_strings(self) -> tuple[str, ...]:
        """Strings that end a reply: the plain format's next-block markers (none with a template)."""
        return () if self.has_template else PLAIN_STOPS

    def reply_text(self, ids: list[int], stops: set[int]) -> str:
        """An assistant turn's text: without its stop token, cut at a plain-format stop string."""
        if ids and ids[-1] in stops:
            ids = ids[:-1]
        text = self.decode(ids)
        strings = self.stop_strings()
        for s in strings:
            text = text.split(s, 1)[0]
        return text[1:] if strings and text.startswith(" ") else text


__all__ = ["ChatFormat", "Delta", "Message", "PLAIN_STOPS", "TURN_END_TOKENS", "plain_text"]
