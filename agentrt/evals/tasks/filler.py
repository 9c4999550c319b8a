"""Deterministic filler prose and name pools for the synthetic tasks (no data files)."""

from __future__ import annotations

import functools
import random
import string

ADJECTIVES = (
    "quiet", "old", "bright", "narrow", "distant", "green", "silent", "busy", "cold", "golden",
    "small", "gentle", "hidden", "broad", "wooden", "early", "late", "rough", "calm", "steep",
)  # fmt: skip
NOUNS = (
    "river", "village", "road", "garden", "market", "bridge", "forest", "harbor", "tower", "field",
    "library", "station", "valley", "mill", "orchard", "castle", "meadow", "school", "lake", "farm",
)  # fmt: skip
ANIMALS = (
    "otter", "falcon", "badger", "heron", "lynx", "marten", "osprey", "panther", "raven", "salmon",
    "tiger", "walrus", "weasel", "bison", "condor", "ferret", "gecko", "ibis", "jackal", "koala",
)  # fmt: skip
COLOURS = (
    "amber", "azure", "coral", "crimson", "ivory", "jade", "lilac", "olive", "pearl", "ruby",
    "scarlet", "silver", "teal", "umber", "violet", "cobalt", "copper", "indigo", "maroon", "saffron",
)  # fmt: skip
PEOPLE = (
    "the farmers", "a traveller", "the children", "an old teacher", "the merchants", "a painter",
    "the fishermen", "a young clerk", "the miller", "two sisters", "the baker", "a shepherd",
)  # fmt: skip
VERBS = (
    "walked along", "looked across", "rested near", "talked about", "passed by", "painted",
    "cleaned", "visited", "remembered", "crossed", "watched", "repaired",
)  # fmt: skip
TIMES = (
    "in the morning", "after the rain", "before dusk", "during the fair", "every spring",
    "at noon", "late in the autumn", "on a windy day", "while it snowed", "after supper",
)  # fmt: skip
CLOSERS = (
    "Nobody was in a hurry.", "The air smelled of wood smoke.", "It was an ordinary day.",
    "The bells rang twice.", "A dog barked somewhere.", "The light was soft and even.",
)  # fmt: skip


def sentence(rng: random.Random) -> str:
    """One filler sentence: plain, grammatical and free of anything a question could ask about."""
    if rng.random() < 0.12:
        return rng.choice(CLOSERS)
    who = rng.choice(PEOPLE)
    verb = rng.choice(VERBS)
    what = f"the {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
    when = rng.choice(TIMES)
    text = f"{who} {verb} {what} {when}." if rng.random() < 0.5 else f"{when}, {who} {verb} {what}."
    return text[0].upper() + text[1:]


class _Stream:
    """The endless sentence stream of one seed, materialised as far as anyone asked."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(f"filler/{seed}")
        self.sentences: list[str] = []

    def take(self, n: int) -> list[str]:
        """The first n sentences."""
        while len(self.sentences) < n:
            self.sentences.append(sentence(self.rng))
        return self.sentences[:n]


@functools.lru_cache(maxsize=16)
def _stream(seed: int) -> _Stream:
    return _Stream(seed)


def filler(seed: int, n: int) -> list[str]:
    """The first n filler sentences of the stream for `seed` (a prefix of any longer call)."""
    return _stream(seed).take(n)


def weave(sentences: list[str], inserts: list[tuple[float, str]]) -> str:
    """Join filler sentences into paragraphs, inserting each (fraction, text) at its fraction.

    Inserts keep their given order when fractions tie; 8 sentences make a paragraph.
    """
    n = len(sentences)
    slots: dict[int, list[str]] = {}
    for frac, text in inserts:
        slots.setdefault(min(n, int(round(frac * n))), []).append(text)
    parts: list[str] = []
    for i in range(n + 1):
        parts.extend(slots.get(i, []))
        if i < n:
            parts.append(sentences[i])
    paragraphs = [" ".join(parts[i : i + 8]) for i in range(0, len(parts), 8)]
    return "\n".join(paragraphs)


def fractions(rng: random.Random, k: int, lo: float = 0.02, hi: float = 0.98) -> list[float]:
    """k sorted positions in [lo, hi] (depths in the document)."""
    return sorted(rng.uniform(lo, hi) for _ in range(k))


def var_names(rng: random.Random, k: int, size: int = 4, upper: bool = True) -> list[str]:
    """k distinct random letter names (e.g. 'QZKB' or 'mirt')."""
    letters = string.ascii_uppercase if upper else string.ascii_lowercase
    names: list[str] = []
    while len(names) < k:
        name = "".join(rng.choice(letters) for _ in range(size))
        if name not in names:
            names.append(name)
    return names


def keys(rng: random.Random, k: int) -> list[str]:
    """k distinct 'colour-animal' keys (e.g. 'amber-otter')."""
    pairs = [f"{c}-{a}" for c in COLOURS for a in ANIMALS]
    return rng.sample(pairs, k)
