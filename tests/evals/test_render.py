"""Chat rendering: the test template, the plain fallback, stop tokens and delta prefills."""

from __future__ import annotations

import copy

import pytest

from agentrt.agent.chat import ChatFormat
from agentrt.evals.render import (
    PLAIN_STOPS,
    plain_text,
    render_ids,
    render_text,
    stop_strings,
    stop_token_ids,
    token_counter,
)
from agentrt.evals.tasks import TASKS
from tests.evals.chat_template import render
from tests.evals.helpers import small_tokenizer


@pytest.fixture(scope="module")
def tok():
    """The small test tokenizer (has the chat template)."""
    return small_tokenizer()


@pytest.fixture(scope="module")
def plain_tok():
    """The same tokenizer without a chat template (exercises the fallback)."""
    out = copy.deepcopy(small_tokenizer())
    out.chat_template = None
    return out


def delta_ids(tok, cached, messages, tools):
    """The agent loop's delta after `cached`, which holds `messages[:-1]` (one new message)."""
    delta = ChatFormat(tok, list(tools or [])).delta(cached, messages[:-1], messages[-1:])
    return delta.ids if delta.how == "diff" else None


def agent_item(tok):
    """A short agent item (tools, a tool turn)."""
    return TASKS["agent"].generate(5, 600, token_counter(tok))


def test_test_template_renders_the_same_in_transformers_and_jinja(tok) -> None:
    item = agent_item(tok)
    conv = item.conversation()
    hf = tok.apply_chat_template(conv, tools=item.tool_list, tokenize=False)
    assert hf == render(conv, item.tool_list)
    assert "<|im_start|>tool\n<tool_response>\n" in hf and "# Tools" in hf
    assert hf.count("<|im_start|>") == 5 and hf.endswith("<|im_end|>\n")
    calls = [
        {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "1+2"}}}
    ]
    msgs = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "", "tool_calls": calls},
    ]
    text = tok.apply_chat_template(msgs, tokenize=False)
    assert (
        '<tool_call>\n{"name": "calculator", "arguments": {"expression": "1+2"}}\n</tool_call>'
        in text
    )


def test_prompt_ids_are_a_prefix_of_the_whole_conversation(tok) -> None:
    for task in TASKS:
        item = TASKS[task].generate(1, 600, token_counter(tok))
        prompt = render_ids(tok, list(item.messages), item.tool_list)
        whole = render_ids(tok, item.conversation(), item.tool_list, add_generation_prompt=False)
        assert whole[: len(prompt)] == prompt and len(prompt) == item.prompt_tokens
        assert tok.decode(prompt).endswith("<|im_start|>assistant\n")


def test_special_tokens_and_stops(tok) -> None:
    for text in ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<tool_call>", "</tool_call>"):
        assert len(tok.encode(text, add_special_tokens=False)) == 1, text
    ids = tok.encode("<tool_call>x</tool_call>", add_special_tokens=False)
    assert tok.decode(ids, skip_special_tokens=True) == "<tool_call>x</tool_call>"
    assert tok.convert_tokens_to_ids("<|im_end|>") in stop_token_ids(tok)
    assert tok.encode("12345", add_special_tokens=False).__len__() == 5, "digits are split"
    assert stop_strings(tok) == ()


def test_delta_after_a_tool_turn_is_the_rendered_suffix(tok) -> None:
    item = agent_item(tok)
    call, result, _ = item.reference
    prompt = render_ids(tok, list(item.messages), item.tool_list)
    reply = tok.encode(call["content"], add_special_tokens=False)
    messages = [*item.messages, call, result]
    delta = delta_ids(tok, prompt + reply, messages, item.tool_list)
    assert tok.decode(prompt + reply + delta) == render_text(tok, messages, item.tool_list)
    # a non-canonical tokenisation of the reply (one token per character) still continues
    odd = [i for ch in call["content"] for i in tok.encode(ch, add_special_tokens=False)]
    assert odd != reply
    delta = delta_ids(tok, prompt + odd, messages, item.tool_list)
    assert tok.decode(prompt + odd + delta) == render_text(tok, messages, item.tool_list)


def test_rewritten_history_gets_an_explicit_delta(tok) -> None:
    """The cache holds a reply the rendering does not show: the new message is rendered alone."""
    item = agent_item(tok)
    prompt = render_ids(tok, list(item.messages), item.tool_list)
    cached = prompt + tok.encode("something else", add_special_tokens=False)
    messages = [*item.messages, *item.reference[:2]]
    assert delta_ids(tok, cached, messages, item.tool_list) is None
    fmt = ChatFormat(tok, item.tool_list)
    delta = fmt.delta(cached, messages[:-1], messages[-1:])
    assert delta.how == "explicit" and delta.text.startswith("<|im_end|>\n<|im_start|>tool\n")


def test_plain_fallback_format(plain_tok) -> None:
    item = agent_item(plain_tok)
    text = render_text(plain_tok, item.conversation(), item.tool_list, add_generation_prompt=False)
    blocks = text.split("\n\n")
    assert blocks[0].startswith("System: ") and blocks[1].startswith("Tools (call one as")
    assert sum(b.startswith("User: ") for b in blocks) == 1
    assert text.count("\n\nAssistant: ") == 2 and "\n\nTool: " in text
    prompt = render_text(plain_tok, list(item.messages), item.tool_list)
    assert prompt.endswith("\n\nAssistant:")
    assert render_ids(plain_tok, list(item.messages), item.tool_list) == plain_tok.encode(prompt)
    assert stop_strings(plain_tok) == PLAIN_STOPS
    assert (
        plain_text([{"role": "user", "content": "x"}], None, add_generation_prompt=False)
        == "User: x"
    )


def test_plain_fallback_continues_after_a_tool_call(plain_tok) -> None:
    item = agent_item(plain_tok)
    call, result, _ = item.reference
    prompt = render_ids(plain_tok, list(item.messages), item.tool_list)
    sampled = plain_tok.encode(" " + call["content"] + "\n\nTool:", add_special_tokens=False)
    fmt = ChatFormat(plain_tok, item.tool_list)
    text = fmt.reply_text(sampled, stop_token_ids(plain_tok))
    assert text == call["content"]
    fed = prompt + sampled  # the cache ran into the next block: the delta continues it
    messages = [*item.messages, {"role": "assistant", "content": text}, result]
    delta = delta_ids(plain_tok, fed, messages, item.tool_list)
    assert delta is not None
    assert plain_tok.decode(fed + delta) == plain_tok.decode(
        render_ids(plain_tok, messages, item.tool_list)
    )
