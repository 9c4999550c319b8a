"""The task generators: deterministic by seed, fitted to the requested length, scored exactly."""

from __future__ import annotations

import json

import pytest

from agentrt.errors import ConfigError
from agentrt.evals.render import token_counter
from agentrt.evals.tasks import TASKS, extract_answer, item_seed, normalise
from agentrt.evals.tasks.agent_tools import TOOLS, calculate, parse_tool_calls, run_tool
from agentrt.evals.tasks.base import fit_count, stated_number
from tests.evals.helpers import small_tokenizer

LENGTHS = [512, 1536]


@pytest.fixture(scope="module")
def count():
    """Prompt token counter of the small test tokenizer."""
    return token_counter(small_tokenizer())


@pytest.mark.parametrize("task", list(TASKS))
def test_generation_is_deterministic_by_seed(task: str, count) -> None:
    a = TASKS[task].generate(11, 600, count)
    b = TASKS[task].generate(11, 600, count)
    c = TASKS[task].generate(12, 600, count)
    assert a.messages == b.messages and a.reference == b.reference and a.answer == b.answer
    assert a.env == b.env and a.id == b.id
    assert a.messages != c.messages and a.id != c.id


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("task", list(TASKS))
def test_prompt_reaches_the_requested_length(task: str, length: int, count) -> None:
    for seed in range(3):
        item = TASKS[task].generate(seed, length, count)
        measured = count(list(item.messages), item.tool_list)
        assert measured == item.prompt_tokens
        assert length - 40 <= measured <= length, (task, seed, measured, length)


@pytest.mark.parametrize("task", list(TASKS))
def test_reference_scores_one_and_wrong_answers_zero(task: str, count) -> None:
    impl = TASKS[task]
    for seed in range(5):
        item = impl.generate(seed, 700, count)
        replies = item.reference_replies()
        assert impl.score(item, replies) == 1.0
        assert item.answer in item.messages[1]["content"] or task in ("arith", "agent")
        wrong = [*replies[:-1], "Answer: 12345678"]
        assert impl.score(item, wrong) == 0.0
        assert impl.score(item, []) == 0.0


def test_arith_reference_chain_of_thought_is_correct(count) -> None:
    for seed in range(10):
        item = TASKS["arith"].generate(seed, 400, count)
        reply = item.reference_replies()[0]
        steps = reply.split("\n")[1]  # forward computation: "b = 12 + 7 = 19. c = ..."
        for step in filter(None, (s.strip() for s in steps.split("."))):
            _, expr, value = (p.strip() for p in step.split("="))
            assert calculate(expr) == value, (seed, step)
        assert extract_answer(reply) == item.answer


def test_agent_traces_call_valid_tools_and_results_match(count) -> None:
    kinds = set()
    for seed in range(12):
        item = TASKS["agent"].generate(seed, 700, count)
        kinds.add(item.env["kind"])
        call_msg, tool_msg, final = item.reference
        assert (call_msg["role"], tool_msg["role"], final["role"]) == (
            "assistant",
            "tool",
            "assistant",
        )
        calls = parse_tool_calls(call_msg["content"])
        assert len(calls) == 1 and calls[0].error is None and calls[0].name in TOOLS
        body = call_msg["content"].removeprefix("<tool_call>\n").removesuffix("\n</tool_call>")
        assert set(json.loads(body)) == {"name", "arguments"}
        assert run_tool(calls[0], item.env["files"]) == tool_msg["content"]
        assert item.answer in tool_msg["content"]
        assert TASKS["agent"].tool_calls_valid(item.reference_replies())
    assert kinds == {"calculator", "read_file", "search_text"}


def test_agent_scorer_refuses_missing_or_invalid_tool_calls(count) -> None:
    item = TASKS["agent"].generate(3, 700, count)
    answer = f"Answer: {item.answer}"
    assert TASKS["agent"].score(item, [answer]) == 0.0, "no tool call"
    for bad in (
        '<tool_call>\n{"name": "rm_rf", "arguments": {}}\n</tool_call>',
        '<tool_call>\n{"name": "calculator", "arguments": {"expr": "1"}}\n</tool_call>',
        '<tool_call>\n{"name": "calculator", "arguments": {"expression": 1}}\n</tool_call>',
        "<tool_call>\n{not json}\n</tool_call>",
    ):
        assert parse_tool_calls(bad)[0].error is not None, bad
        assert TASKS["agent"].score(item, [bad, answer]) == 0.0, bad


def test_tools_execute_safely() -> None:
    assert calculate("(12 + 7) * 3") == "57"
    assert calculate("7 / 2") == "3.5"
    assert calculate("__import__('os')").startswith("error")
    assert calculate("1 / 0").startswith("error")
    files = {"a.txt": "alpha port = 1\nbeta", "b.txt": "Beta port = 2"}
    search = parse_tool_calls(
        '<tool_call>{"name": "search_text", "arguments": {"query": "beta"}}</tool_call>'
    )
    assert run_tool(search[0], files) == "a.txt:2: beta\nb.txt:1: Beta port = 2"
    read = parse_tool_calls(
        '<tool_call>{"name": "read_file", "arguments": {"path": "nope"}}</tool_call>'
    )
    assert run_tool(read[0], files).startswith("error: no such file")


def test_answer_extraction_and_normalisation() -> None:
    assert extract_answer("blah\nAnswer: 42.") == "42"
    assert extract_answer("answer: x\nANSWER:  `Foo Bar` ") == "foo bar"
    assert extract_answer("no marker\n\n  1234 \n") == "1234"
    assert extract_answer("") == ""
    assert normalise('  "The  Value." ') == "the value"


def test_a_one_sentence_reply_states_a_numeric_answer(count) -> None:
    # small models answer "The special magic number for X is 1631627." without an Answer: line
    item = TASKS["niah"].generate(3, 600, count)
    key = item.messages[1]["content"].rsplit("for ", 1)[1].rstrip("?")
    said = f"The special magic number for {key} is {item.answer}."
    assert TASKS["niah"].score(item, [said]) == 1.0
    assert TASKS["niah"].score(item, [f"The number is {item.answer}.\nAnswer: 7"]) == 0.0
    assert TASKS["niah"].score(item, [f"It is 12.\n{item.answer} maybe"]) == 0.0  # first line only
    assert TASKS["niah"].score(item, [f"It is {item.answer}0."]) == 0.0
    assert stated_number("Balance: 1,027 in all.") == "1027"
    assert stated_number("no number here") == "" and stated_number("") == ""


def test_lookup_is_a_single_needle(count) -> None:
    item = TASKS["lookup"].generate(5, 700, count)
    assert item.messages[1]["content"].count("The special magic number for") == 1
    assert item.id.startswith("lookup-") and item.task == "lookup"


def test_item_seeds_separate_splits_tasks_lengths_and_indices() -> None:
    seeds = {
        item_seed(0, t, n, i, split)
        for t in ("niah", "vt")
        for n in (1024, 4096)
        for i in range(3)
        for split in ("eval", "train")
    }
    assert len(seeds) == 24
    assert item_seed(0, "niah", 1024, 0) == item_seed(0, "niah", 1024, 0, "eval")


def test_too_short_lengths_are_a_config_error(count) -> None:
    with pytest.raises(ConfigError, match="below the shortest prompt"):
        TASKS["agent"].generate(0, 100, count)


def test_fit_count_finds_the_largest_fitting_size() -> None:
    for per, base, target in ((7, 30, 1000), (1, 0, 5), (13, 100, 113), (3, 50, 4096)):
        n = fit_count(lambda k: k, lambda k: base + per * k, target)  # noqa: B023
        assert base + per * n <= target < base + per * (n + 1)


def test_items_do_not_log_prompt_text(count) -> None:
    item = TASKS["niah"].generate(0, 300, count)
    assert "magic" not in repr(item) and str(item.prompt_tokens) in repr(item)


@pytest.mark.parametrize(("task", "extra"), [("niah", 3), ("vt", 2), ("arith", 1)])
def test_followups_ask_the_other_keys_and_leave_the_first_question_alone(
    task: str, extra: int, count
) -> None:
    import dataclasses

    base = TASKS[task]
    for seed in range(4):
        plain = base.generate(seed, 500, count)
        more = dataclasses.replace(base, followups=10).generate(seed, 500, count)
        assert more.messages == plain.messages and more.answer == plain.answer
        assert more.reference[0] == plain.reference[0] and more.prompt_tokens == plain.prompt_tokens
        turns = more.reference[1:]
        assert [m["role"] for m in turns] == ["user", "assistant"] * extra  # capped by the keys
        doc = plain.messages[1]["content"]
        first = plain.messages[1]["content"].rsplit("Question: ", 1)[1]
        asked = [m["content"].removeprefix("Question: ") for m in turns[0::2]]
        assert len({first, *asked}) == extra + 1, "each other key asked once"
        answers = [extract_answer(m["content"]) for m in turns[1::2]]
        if task != "arith":  # niah/vt values stand in the document; arith's are computed
            assert all(a in doc for a in answers)
        one = dataclasses.replace(base, followups=1).generate(seed, 500, count)
        assert one.reference == more.reference[:3], "a prefix of the longer list"
