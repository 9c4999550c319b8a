"""Delta rendering: the new messages' tokens only, for appending and history-rewriting templates."""

from __future__ import annotations

import pytest

from agentrt.agent.chat import ChatFormat
from agentrt.tools import Tool
from agentrt.tools.builtin import calculator
from tests.agent.helpers import chat_tokenizer

TOOLS = [Tool.from_function(calculator).schema]


def _conversation(fmt: ChatFormat, reply: str, *, stopped: bool = True):
    """System + user rendered, then an assistant reply as the model would leave it in the cache."""
    tok = fmt.tokenizer
    msgs = [fmt.system_message("Be brief."), {"role": "user", "content": "What is 2+3?"}]
    ids = fmt.prompt(msgs, add_generation_prompt=True).ids
    gen = fmt.encode(reply) + ([tok.convert_tokens_to_ids("<|im_end|>")] if stopped else [])
    msgs.append({"role": "assistant", "content": reply})
    return msgs, ids + gen


@pytest.mark.parametrize("template", ["smollm2", "hermes"])
@pytest.mark.parametrize("stopped", [True, False], ids=["eot", "cut"])
def test_delta_is_the_difference_of_two_renders(template, stopped):
    """Appending templates: the delta = render(k+1) − cache, and cache + delta = render(k+1)."""
    fmt = ChatFormat(chat_tokenizer(template), TOOLS)
    msgs, cached = _conversation(
        fmt, '<tool_call>[{"name": "calculator"}]</tool_call>', stopped=stopped
    )
    new = [{"role": "tool", "name": "calculator", "content": "5"}]
    delta = fmt.delta(cached, msgs, new)
    assert delta.how == "diff"
    full = fmt.render(msgs + new, add_generation_prompt=True)
    assert fmt.decode(cached) + delta.text == full
    assert delta.ids == fmt.encode(delta.text)
    if not stopped:  # the turn is closed with the template's end-of-turn text
        assert delta.text.startswith("<|im_end|>\n")
    else:
        assert delta.text.startswith("\n<|im_start|>")


def test_tools_go_to_the_system_message_when_the_template_ignores_them():
    """SmolLM2's template has no `tools`: the loop writes them in SmolLM2's <tools> format."""
    smol = ChatFormat(chat_tokenizer("smollm2"), TOOLS)
    hermes = ChatFormat(chat_tokenizer("hermes"), TOOLS)
    assert smol.tools_in_system and not hermes.tools_in_system
    text = smol.render([smol.system_message("Be brief.")], add_generation_prompt=False)
    assert "<tools>" in text and '"calculator"' in text and "<tool_call>[" in text
    text = hermes.render([hermes.system_message("Be brief.")], add_generation_prompt=False)
    assert "# Tools" in text and '"calculator"' in text


def test_history_rewriting_template_gets_an_explicit_delta():
    """A template that strips earlier reasoning must not force a re-prefill: render the delta alone."""
    fmt = ChatFormat(chat_tokenizer("rewriting"), [])
    msgs, cached = _conversation(fmt, "<think>it is 5</think> Answer: 5", stopped=True)
    new = [{"role": "user", "content": "And 3+4?"}]
    full = fmt.render(msgs + new, add_generation_prompt=True)
    assert not full.startswith(fmt.decode(cached))  # the template rewrote the reply
    delta = fmt.delta(cached, msgs, new)
    assert delta.how == "explicit"
    assert delta.text == "\n<|im_start|>user\nAnd 3+4?<|im_end|>\n<|im_start|>assistant\n"
    # a reply cut before its end-of-turn token is closed first
    msgs, cached = _conversation(fmt, "<think>x</think> y", stopped=False)
    assert fmt.delta(cached, msgs, new).text.startswith("<|im_end|>\n<|im_start|>user\n")


def test_plain_fallback_without_a_template():
    """A tokenizer without a chat template renders `Role: content` blocks; deltas still work."""
    tok = chat_tokenizer("smollm2")
    fmt = ChatFormat(tok, [])
    fmt_plain = ChatFormat(_no_template(tok), [])
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
    assert (
        fmt_plain.render(msgs, add_generation_prompt=True) == "System: S\n\nUser: Q\n\nAssistant:"
    )
    ids = fmt_plain.prompt(msgs, add_generation_prompt=True).ids
    gen = fmt_plain.encode(" A")
    msgs.append({"role": "assistant", "content": fmt_plain.reply_text(gen, set())})
    delta = fmt_plain.delta(ids + gen, msgs, [{"role": "user", "content": "R"}])
    assert delta.text == "\n\nUser: R\n\nAssistant:" and delta.how == "diff"
    assert fmt.has_template and not fmt_plain.has_template


def _no_template(tok):
    import copy

    clone = copy.deepcopy(tok)
    clone.chat_template = None
    return clone
