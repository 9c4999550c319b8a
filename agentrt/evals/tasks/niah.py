"""Multi-key needle in a haystack: several key → number needles in long prose; ask for one."""

from __future__ import annotations

import random
from dataclasses import dataclass

from agentrt.evals.tasks.base import (
    SYSTEM_PROMPT,
    Item,
    TokenCounter,
    exact_match,
    fit_count,
    normalise,
    reference_with_followups,
)
from agentrt.evals.tasks.filler import filler, fractions, keys, weave


@dataclass(frozen=True)
class NeedleTask:
    """RULER-style multi-key NIAH: `needles` needles 'The special magic number for K is V.'

    The question names one key; the reference copies the needle, then 'Answer: V'.
    `followups` > 0 (training documents only) appends that many later user turns, each
    asking for another needle's number, with their reference replies; the first question
    and the item's answer are the same as without them.
    """

    needles: int = 4
    digits: int = 7
    name: str = "niah"
    followups: int = 0

    def generate(self, seed: int, length: int, count: TokenCounter) -> Item:
        """The item for `seed`, its prompt fitted to at most `length` tokens."""
        rng = random.Random(f"niah/{seed}")
        names = keys(rng, self.needles)
        values = [str(rng.randrange(10 ** (self.digits - 1), 10**self.digits)) for _ in names]
        depths = fractions(rng, self.needles)
        order = list(range(self.needles))
        rng.shuffle(order)
        target = rng.randrange(self.needles)
        needles = [
            (depths[i], f"The special magic number for {names[j]} is {values[j]}.")
            for i, j in enumerate(order)
        ]

        def question(j: int) -> str:
            return f"What is the special magic number for {names[j]}?"

        def reply(j: int) -> str:
            return f"The special magic number for {names[j]} is {values[j]}.\nAnswer: {values[j]}"

        def build(n: int) -> list[dict]:
            doc = weave(filler(seed, n), needles)
            user = f"Read the document and answer the question.\n\nDocument:\n{doc}\n\nQuestion: {question(target)}"
            return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]

        messages = fit_count(build, lambda m: count(m, None), length)
        reference = reference_with_followups(
            f"niah/{seed}", target, self.needles, self.followups, question, reply
        )
        return Item(
            id=f"{self.name}-{length}-{seed}",
            task=self.name,
            messages=tuple(messages),
            reference=reference,
            answer=normalise(values[target]),
            prompt_tokens=count(messages, None),
        )

    def score(self, item: Item, replies: list[str]) -> float:
        """Exact match of the extracted final answer."""
        return exact_match(item, replies)
