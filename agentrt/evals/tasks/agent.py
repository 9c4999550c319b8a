"""Agent traces: find a fact in a long document, call a tool (`<tool_call>` JSON), then answer."""

from __future__ import annotations

import random
from dataclasses import dataclass

from agentrt.evals.tasks.agent_tools import TOOLS, format_call, parse_tool_calls, run_tool
from agentrt.evals.tasks.base import (
    SYSTEM_PROMPT,
    Item,
    Message,
    TokenCounter,
    extract_answer,
    fit_count,
    normalise,
)
from agentrt.evals.tasks.filler import filler, fractions, keys, var_names, weave

AGENT_SYSTEM = SYSTEM_PROMPT + " Call a tool when the question asks for one."
KINDS = ("calculator", "read_file", "search_text")
# (facts for the document, question, (tool, arguments) of the reference call, env, answer)
Scenario = tuple[list[str], str, tuple[str, dict], dict, str]


def _calculator(rng: random.Random, k: int) -> Scenario:
    """Account balances in the text; add two of them with the calculator."""
    names = keys(rng, k)
    values = [rng.randint(100, 999) for _ in names]
    a, b = rng.sample(range(k), 2)
    facts = [f"Account {n} holds {v} credits." for n, v in zip(names, values, strict=True)]
    question = (
        f"What is the combined balance of accounts {names[a]} and {names[b]}? "
        "Use the calculator tool."
    )
    call = ("calculator", {"expression": f"{values[a]} + {values[b]}"})
    return facts, question, call, {}, str(values[a] + values[b])


def _read_file(rng: random.Random, k: int) -> Scenario:
    """The text says which file holds a topic's notes; read it for the access code."""
    topics = keys(rng, k)
    paths = [f"notes/{name}.txt" for name in var_names(rng, k, size=5, upper=False)]
    codes = [rng.randint(1000, 9999) for _ in topics]
    files = {
        p: f"Notes on {t}.\nAccess code for {t}: {c}.\n"
        for p, t, c in zip(paths, topics, codes, strict=True)
    }
    facts = [
        f"The notes about {t} are in the file {p}." for t, p in zip(topics, paths, strict=True)
    ]
    i = rng.randrange(k)
    question = f"What is the access code for {topics[i]}? Read the file that holds its notes."
    return facts, question, ("read_file", {"path": paths[i]}), {"files": files}, str(codes[i])


def _search_text(rng: random.Random, k: int) -> Scenario:
    """The text gives each service an alias; search the workspace for the alias's port."""
    services = keys(rng, k)
    aliases = [n.lower() for n in var_names(rng, k, size=6)]
    ports = rng.sample(range(2000, 9999), k)
    lines = [f"{a} port = {p}" for a, p in zip(aliases, ports, strict=True)]
    rng.shuffle(lines)
    half = (len(lines) + 1) // 2
    files = {
        "config/main.txt": "\n".join(lines[:half]),
        "config/extra.txt": "\n".join(lines[half:]),
    }
    facts = [f"The service {s} is also called {a}." for s, a in zip(services, aliases, strict=True)]
    i = rng.randrange(k)
    question = (
        f"Which port does the service {services[i]} use? Search the workspace for its other name."
    )
    call = ("search_text", {"query": aliases[i]})
    return facts, question, call, {"files": files}, str(ports[i])


_BUILDERS = {"calculator": _calculator, "read_file": _read_file, "search_text": _search_text}


@dataclass(frozen=True)
class AgentTask:
    """Tool-use traces in the Hermes/Qwen format with `calculator`, `read_file`, `search_text`.

    The facts the call needs are spread through long prose; the reference is one assistant
    turn with the call, the tool's result as a `tool` message, then 'Answer: V'. Scoring:
    at least one tool call, every call parses and fits its tool's schema, and the final
    answer matches.
    """

    facts: int = 4
    max_turns: int = 3  # assistant turns before the runner stops calling tools
    name: str = "agent"

    def generate(self, seed: int, length: int, count: TokenCounter) -> Item:
        """The item for `seed`, its prompt (tools included) fitted to at most `length` tokens."""
        rng = random.Random(f"agent/{seed}")
        kind = KINDS[rng.randrange(len(KINDS))]
        facts, question, (tool, args), env, answer = _BUILDERS[kind](rng, self.facts)
        depths = fractions(rng, len(facts))
        order = list(range(len(facts)))
        rng.shuffle(order)
        inserts = [(depths[i], facts[j]) for i, j in enumerate(order)]
        tools = [TOOLS[name] for name in KINDS]

        def build(n: int) -> list[Message]:
            doc = weave(filler(seed, n), inserts)
            user = f"Document:\n{doc}\n\nQuestion: {question}"
            return [{"role": "system", "content": AGENT_SYSTEM}, {"role": "user", "content": user}]

        messages = fit_count(build, lambda m: count(m, tools), length)
        call_text = format_call(tool, args)
        files = env.get("files", {})
        result = run_tool(parse_tool_calls(call_text)[0], files)
        assert answer in result, (kind, answer, len(result))
        reference = (
            {"role": "assistant", "content": call_text},
            {"role": "tool", "content": result},
            {"role": "assistant", "content": f"Answer: {answer}"},
        )
        return Item(
            id=f"agent-{length}-{seed}",
            task=self.name,
            messages=tuple(messages),
            reference=reference,
            answer=normalise(answer),
            prompt_tokens=count(messages, tools),
            tools=tuple(tools),
            env={"files": files, "kind": kind},
        )

    def score(self, item: Item, replies: list[str]) -> float:
        """1.0 iff ≥ 1 tool call, all calls valid, and the last reply's answer matches."""
        calls = [c for reply in replies for c in parse_tool_calls(reply)]
        if not calls or any(c.error is not None for c in calls) or not replies:
            return 0.0
        return float(extract_answer(replies[-1]) == item.answer)

    def tool_calls_valid(self, replies: list[str]) -> bool:
        """Whether the replies contain ≥ 1 tool call and every call parses and validates."""
        calls = [c for reply in replies for c in parse_tool_calls(reply)]
        return bool(calls) and all(c.error is None for c in calls)
