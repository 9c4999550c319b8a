"""Answers out of reasoning chains, and the vote that picks one chain of several."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from agentrt.errors import ConfigError

VOTES = ("majority", "first", "all")


@dataclass(frozen=True)
class VoteSpec:
    """How N parallel chains are judged: the vote, and the regex that finds each chain's answer.

    `answer_pattern` is searched in each chain's text; the last match wins (reasoning ends
    with the answer), its first group when it has groups. Without a pattern the whole
    reply (stripped, whitespace collapsed) is the answer.
    """

    vote: str = "majority"
    answer_pattern: str | None = None

    def __post_init__(self) -> None:
        """Refuse an unknown vote or a regex that does not compile."""
        if self.vote not in VOTES:
            raise ConfigError(
                f"vote={self.vote!r} is not one of {', '.join(VOTES)}",
                hint="majority: the most common answer; first: the chain that answered first; "
                "all: no vote, every chain is kept",
            )
        if self.answer_pattern is not None:
            try:
                re.compile(self.answer_pattern)
            except re.error as err:
                raise ConfigError(
                    f"answer_pattern {self.answer_pattern!r} is not a valid regex: {err}",
                    hint=r"e.g. 'answer is (-?\d+)' (Python re syntax; quote it in YAML)",
                ) from None


def extract_answer(text: str, pattern: str | None) -> str | None:
    """The answer a chain gave: the last match of `pattern` (group 1 if any), else the text."""
    if pattern is None:
        answer = " ".join(text.split())
        return answer or None
    matches = list(re.finditer(pattern, text))
    if not matches:
        return None
    last = matches[-1]
    answer = last.group(1) if last.re.groups else last.group(0)
    answer = (answer or "").strip().rstrip(".").strip()
    return answer or None


def tally(answers: Sequence[str | None]) -> dict[str, int]:
    """Votes per answer, in order of first appearance (chains without an answer do not vote)."""
    return dict(Counter(a for a in answers if a is not None))


def pick(answers: Sequence[str | None], lengths: Sequence[int], vote: str) -> int:
    """Index of the winning chain; deterministic (ties go to the lowest chain index).

    majority: the first chain holding the most common answer; first: the chain that
    answered in the fewest tokens (it finished first in the shared batch); all: chain 0.
    With no answer anywhere the winner is chain 0.
    """
    if len(answers) != len(lengths) or not answers:
        raise ValueError(f"need one length per answer, got {len(answers)} and {len(lengths)}")
    answered = [i for i, a in enumerate(answers) if a is not None]
    if vote == "all" or not answered:
        return 0
    if vote == "first":
        return min(answered, key=lambda i: (lengths[i], i))
    if vote != "majority":
        raise ConfigError(f"vote={vote!r} is not one of {', '.join(VOTES)}")
    counts = tally(answers)
    best = max(counts.values())
    winner = next(a for a in counts if counts[a] == best)  # dicts keep first-appearance order
    return answers.index(winner)


__all__ = ["VOTES", "VoteSpec", "extract_answer", "pick", "tally"]
