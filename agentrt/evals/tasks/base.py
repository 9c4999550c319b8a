"""The task-suite contract: `Item`, the `Task` protocol, item seeds, length fitting and scoring."""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from agentrt.errors import ConfigError

Message = dict[str, Any]  # {"role": "system"|"user"|"assistant"|"tool", "content": str}
# Counts the tokens of a rendered prompt: (messages, tools) -> tokens (chat template + generation prompt)
TokenCounter = Callable[[list[Message], list[dict[str, Any]] | None], int]

ANSWER_RE = re.compile(r"answer\s*:", re.IGNORECASE)
NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
SYSTEM_PROMPT = (
    "You are a careful assistant working with long documents. "
    "Finish your reply with a last line of the form 'Answer: <value>'."
)


@dataclass(frozen=True, repr=False)
class Item:
    """One evaluation item: a chat prompt, the reference continuation and the expected answer."""

    id: str
    task: str
    messages: tuple[Message, ...]  # the prompt: system + user
    reference: tuple[Message, ...]  # continuation: assistant, tool (and follow-up user) turns
    answer: str  # the expected final answer, normalised
    prompt_tokens: int  # tokens of the rendered prompt under the counter it was fitted with
    tools: tuple[dict[str, Any], ...] | None = None  # JSON schemas (OpenAI function format)
    env: dict[str, Any] = field(default_factory=dict)  # agent tasks: the files the tools see

    def __repr__(self) -> str:
        """Lengths only: items carry prompt text, which is not logged."""
        return f"Item(id={self.id!r}, task={self.task!r}, prompt_tokens={self.prompt_tokens})"

    @property
    def tool_list(self) -> list[dict[str, Any]] | None:
        """Tool schemas as a list (what chat templates take), or None."""
        return list(self.tools) if self.tools else None

    def reference_replies(self) -> list[str]:
        """The assistant texts of the reference continuation, in order."""
        return [m["content"] for m in self.reference if m["role"] == "assistant"]

    def conversation(self) -> list[Message]:
        """Prompt + reference: the whole conversation (training documents)."""
        return [dict(m) for m in (*self.messages, *self.reference)]


class Task(Protocol):
    """A generator of items at any context length, and its scorer."""

    name: str

    def generate(self, seed: int, length: int, count: TokenCounter) -> Item:
        """The item for `seed` whose rendered prompt has at most `length` tokens (close to it)."""
        ...

    def score(self, item: Item, replies: list[str]) -> float:
        """1.0 if the assistant replies (one per turn) solve the item, else 0.0."""
        ...


def item_seed(seed: int, task: str, length: int, index: int, split: str = "eval") -> int:
    """A 63-bit seed for item `index` of (task, length); `split` keeps train and eval apart."""
    digest = hashlib.sha256(f"{split}/{task}/{length}/{seed}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def normalise(text: str) -> str:
    """Lower-case, collapse whitespace, strip quotes, brackets and trailing punctuation."""
    out = re.sub(r"\s+", " ", text.strip().lower())
    return out.strip(" .,;:!?'\"`*()[]")


def extract_answer(text: str) -> str:
    """The normalised final answer: after the last 'Answer:' on its line, else the last line."""
    hits = list(ANSWER_RE.finditer(text))
    if hits:
        rest = text[hits[-1].end() :]
        return normalise(rest.strip().split("\n", 1)[0] if rest.strip() else "")
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return normalise(lines[-1]) if lines else ""


def stated_number(text: str) -> str:
    """The last number on the reply's first non-empty line ('… is 1631627.' -> '1631627'), or ''."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    numbers = NUMBER_RE.findall(lines[0]) if lines else []
    return numbers[-1].replace(",", "") if numbers else ""


def exact_match(item: Item, replies: list[str]) -> float:
    """1.0 iff the last reply's final answer equals the item's answer.

    The final answer follows the last 'Answer:'. A reply without that line (small models
    answer in one sentence: 'The special magic number for X is 1631627.') is judged by its
    last line, or, for a numeric answer, by the last number its first line states.
    """
    if not replies:
        return 0.0
    reply = replies[-1]
    if extract_answer(reply) == item.answer:
        return 1.0
    numeric = NUMBER_RE.fullmatch(item.answer) is not None
    return float(numeric and not ANSWER_RE.search(reply) and stated_number(reply) == item.answer)


def fit_count(build: Callable[[int], Any], measure: Callable[[Any], int], target: int) -> Any:
    """The build(n) with the largest n whose measure is ≤ target (measure non-decreasing in n).

    Secant steps from a per-unit estimate, then a bracketing search: a handful of renders
    even at long lengths. Raises ConfigError when even build(0) is longer than `target`.
    """
    cache: dict[int, tuple[Any, int]] = {}

    def at(n: int) -> int:
        if n not in cache:
            built = build(n)
            cache[n] = (built, measure(built))
        return cache[n][1]

    base = at(0)
    if base > target:
        raise ConfigError(
            f"length {target} is below the shortest prompt of this task ({base} tokens)",
            hint=f"ask for at least {base} tokens",
        )
    probe = max(1, min(64, target // 16))
    per = max(1.0, (at(probe) - base) / probe)
    lo, hi = 0, None  # at(lo) ≤ target < at(hi)
    guess = max(1, int((target - base) / per))
    for _ in range(64):
        size = at(guess)
        if size <= target:
            lo = max(lo, guess)
            step = int((target - size) / per)
            nxt = guess + max(1, step)
        else:
            hi = guess if hi is None else min(hi, guess)
            nxt = guess - max(1, int((size - target) / per))
        if hi is not None:
            if hi - lo <= 1:
                break
            nxt = min(max(nxt, lo + 1), hi - 1)
            if nxt in cache:
                nxt = (lo + hi) // 2
        guess = nxt
    return cache[lo][0]


def check_length(task: str, item: Item, length: int) -> None:
    """Internal invariant: a fitted item never exceeds the requested length."""
    assert item.prompt_tokens <= length, (task, item.prompt_tokens, length)


def choose(rng: random.Random, pool: Sequence[str], k: int) -> list[str]:
    """k distinct entries of pool (k ≤ len(pool))."""
    return rng.sample(list(pool), k)


def reference_with_followups(
    name: str,
    first: int,
    count: int,
    followups: int,
    question: Callable[[int], str],
    reply: Callable[[int], str],
) -> tuple[Message, ...]:
    """The reply about key `first`, then up to `followups` turns asking about other keys.

    Keys are indices in range(count); the other keys come in an order drawn from their own
    RNG (`name` + '/followups'), so the first question and everything before it are the
    same with or without follow-ups. Each follow-up is a user turn 'Question: question(i)'
    and an assistant turn reply(i).
    """
    turns: list[Message] = [{"role": "assistant", "content": reply(first)}]
    others = [i for i in range(count) if i != first]
    random.Random(f"{name}/followups").shuffle(others)
    for i in others[: max(0, followups)]:
        turns.append({"role": "user", "content": f"Question: {question(i)}"})
        turns.append({"role": "assistant", "content": reply(i)})
    return tuple(turns)
