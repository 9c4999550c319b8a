"""Variable tracking: chains VAR A = 48213 … VAR B = A … in long prose; ask the last one's value."""

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
from agentrt.evals.tasks.filler import filler, fractions, var_names, weave


@dataclass(frozen=True)
class VariableTrackingTask:
    """RULER-style variable tracking with `chains` chains of `hops` assignments each.

    One chain is asked about; the others are distractors with their own values. The
    reference traces the chain backwards, one lookup per hop, then gives 'Answer: V'.
    `followups` > 0 (training documents only) appends later user turns asking about the
    other chains' last variables, with their reference replies.
    """

    hops: int = 4
    chains: int = 3
    name: str = "vt"
    followups: int = 0

    def generate(self, seed: int, length: int, count: TokenCounter) -> Item:
        """The item for `seed`, its prompt fitted to at most `length` tokens."""
        rng = random.Random(f"vt/{seed}")
        names = var_names(rng, self.hops * self.chains)
        values = rng.sample(range(10000, 100000), self.chains)
        inserts: list[tuple[float, str]] = []
        chains = []
        for c in range(self.chains):
            chain = names[c * self.hops : (c + 1) * self.hops]
            chains.append(chain)
            depths = fractions(rng, self.hops)
            inserts.append((depths[0], f"VAR {chain[0]} = {values[c]}."))
            for h in range(1, self.hops):
                inserts.append((depths[h], f"VAR {chain[h]} = {chain[h - 1]}."))
        inserts.sort(key=lambda x: x[0])
        target = rng.randrange(self.chains)

        def question(c: int) -> str:
            return f"What is the value of the variable {chains[c][-1]}?"

        def reply(c: int) -> str:
            chain = chains[c]
            steps = [f"{chain[h]} = {chain[h - 1]}." for h in range(self.hops - 1, 0, -1)]
            steps.append(f"{chain[0]} = {values[c]}.")
            return " ".join(steps) + f"\nAnswer: {values[c]}"

        def build(n: int) -> list[dict]:
            doc = weave(filler(seed, n), inserts)
            user = (
                "The document assigns variables with lines like 'VAR X = 5.' or 'VAR Y = X.' "
                f"(Y takes the value of X).\n\nDocument:\n{doc}\n\nQuestion: {question(target)}"
            )
            return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]

        messages = fit_count(build, lambda m: count(m, None), length)
        reference = reference_with_followups(
            f"vt/{seed}", target, self.chains, self.followups, question, reply
        )
        return Item(
            id=f"vt-{length}-{seed}",
            task=self.name,
            messages=tuple(messages),
            reference=reference,
            answer=normalise(str(values[target])),
            prompt_tokens=count(messages, None),
        )

    def score(self, item: Item, replies: list[str]) -> float:
        """Exact match of the extracted final answer."""
        return exact_match(item, replies)
