"""Multi-hop arithmetic: 'Let b = a + 7.' chains in long prose; the reference writes the steps out."""

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


def next_step(rng: random.Random, value: int) -> tuple[str, int, int]:
    """(op, operand, result) keeping results in 0..999: + and − by 1..20, × by 2..4."""
    ops = ["+", "-"] + (["*"] if value * 2 <= 999 else [])
    op = rng.choice(ops)
    if op == "*":
        k = rng.randint(2, max(2, min(4, 999 // max(1, value))))
        return op, k, value * k
    if op == "+":
        k = rng.randint(1, min(20, 999 - value)) if value < 999 else 0
        if k == 0:
            op, k = "-", rng.randint(1, 20)
            return op, k, value - k
        return op, k, value + k
    k = rng.randint(1, min(20, value)) if value > 0 else 0
    if k == 0:
        k = rng.randint(1, 20)
        return "+", k, value + k
    return op, k, value - k


@dataclass(frozen=True)
class ArithmeticTask:
    """`chains` chains of `hops` definitions ('Let a = 12.', 'Let b = a * 3.'); ask the last value.

    The reference first resolves the chain backwards (one lookup per hop), then computes
    forwards writing every operation out ('b = 12 * 3 = 36.'), then 'Answer: V'.
    """

    hops: int = 3
    chains: int = 2
    name: str = "arith"
    followups: int = 0  # training documents: later user turns asking about the other chains

    def generate(self, seed: int, length: int, count: TokenCounter) -> Item:
        """The item for `seed`, its prompt fitted to at most `length` tokens."""
        rng = random.Random(f"arith/{seed}")
        names = var_names(rng, self.hops * self.chains, upper=False)
        inserts: list[tuple[float, str]] = []
        chains = []
        for c in range(self.chains):
            chain = names[c * self.hops : (c + 1) * self.hops]
            value = rng.randint(2, 60)
            steps = [(chain[0], None, None, value)]
            for h in range(1, self.hops):
                op, k, value = next_step(rng, value)
                steps.append((chain[h], op, k, value))
            chains.append(steps)
            depths = fractions(rng, self.hops)
            inserts.append((depths[0], f"Let {chain[0]} = {steps[0][3]}."))
            for h in range(1, self.hops):
                _, op, k, _ = steps[h]
                inserts.append((depths[h], f"Let {chain[h]} = {chain[h - 1]} {op} {k}."))
        inserts.sort(key=lambda x: x[0])
        target = rng.randrange(self.chains)

        def question(c: int) -> str:
            return f"What is the value of {chains[c][-1][0]}? Work it out step by step."

        def build(n: int) -> list[dict]:
            doc = weave(filler(seed, n), inserts)
            user = f"The document defines numbers with 'Let' lines.\n\nDocument:\n{doc}\n\nQuestion: {question(target)}"
            return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]

        messages = fit_count(build, lambda m: count(m, None), length)
        reference = reference_with_followups(
            f"arith/{seed}", target, self.chains, self.followups, question,
            lambda c: self._reply(chains[c]),
        )  # fmt: skip
        return Item(
            id=f"arith-{length}-{seed}",
            task=self.name,
            messages=tuple(messages),
            reference=reference,
            answer=normalise(str(chains[target][-1][3])),
            prompt_tokens=count(messages, None),
        )

    def _reply(self, steps: list[tuple]) -> str:
        """The reference reply for one chain: resolved backwards, computed forwards, answer."""
        back = [f"{steps[h][0]} = {steps[h - 1][0]} {steps[h][1]} {steps[h][2]}." for h in
                range(self.hops - 1, 0, -1)]  # fmt: skip
        back.append(f"{steps[0][0]} = {steps[0][3]}.")
        forward = [
            f"{steps[h][0]} = {steps[h - 1][3]} {steps[h][1]} {steps[h][2]} = {steps[h][3]}."
            for h in range(1, self.hops)
        ]
        reply = " ".join(back) + "\n" + " ".join(forward) + f"\nAnswer: {steps[-1][3]}"
        return reply.replace("\n\n", "\n")

    def score(self, item: Item, replies: list[str]) -> float:
        """Exact match of the extracted final answer (the written steps are not graded)."""
        return exact_match(item, replies)
