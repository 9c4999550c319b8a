"""Eval options from strings ("1k,4k", "2,4,8") to a validated `EvalSpec`; every problem at once.

Imports neither torch nor transformers, so the CLI validates before loading a model.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from agentrt.errors import ConfigError
from agentrt.evals.result import Condition
from agentrt.evals.tasks import TASKS

# the policies of agentrt.dms.policies (POLICY_NAMES there; a test keeps the two equal)
POLICY_NAMES = ("dms", "dense", "window", "streaming", "tova", "h2o")
BASELINES = ("window", "streaming", "tova", "h2o")  # take a compression ratio
MIN_LENGTH = 64
_LENGTH_RE = re.compile(r"^(\d+(?:\.\d+)?)([kKmM]?)$")


@dataclass(frozen=True)
class EvalSpec:
    """What to evaluate: tasks × lengths × conditions, n items each."""

    tasks: tuple[str, ...]
    lengths: tuple[int, ...]
    policies: tuple[str, ...]
    crs: tuple[float, ...]
    n_items: int = 20
    seed: int = 0
    max_new_tokens: int = 64
    match_dms: bool = False  # also run each baseline at the CR DMS achieved (--cr dms)

    def __post_init__(self) -> None:
        problems = spec_problems(self)
        if problems:
            raise ConfigError("; ".join(problems), hint=_HINT)

    def conditions(self) -> list[Condition]:
        """dense at CR 1, dms at the model's own CR, each baseline at every CR.

        With `match_dms` the runner adds each baseline at the CR DMS achieved on the same
        task and length, once DMS has run (see `agentrt.evals.runner.evaluate`).
        """
        out: list[Condition] = []
        for policy in dict.fromkeys(self.policies):  # a policy named twice runs once
            if policy == "dense":
                out.append(Condition("dense", 1.0))
            elif policy == "dms":
                out.append(Condition("dms", None))
            else:
                out.extend(Condition(policy, cr) for cr in self.crs)
        return out


MATCH_SKIPPED = "the baselines at the DMS ratio (--cr dms) skipped with dms"


def matched_conditions(
    policies: Sequence[str], achieved_cr: float, taken: Collection[Condition]
) -> list[Condition]:
    """Each baseline among `policies` at the ratio DMS achieved (2 decimals, at least 1),
    less the conditions in `taken` (a ratio asked for already runs once)."""
    ratio = max(1.0, round(achieved_cr, 2))
    wanted = (Condition(p, ratio) for p in dict.fromkeys(policies) if p in BASELINES)
    return [c for c in wanted if c not in taken]


_HINT = (
    f"tasks: {', '.join(TASKS)}; policies: {', '.join(POLICY_NAMES)}; lengths like 1k,4k or 1500 "
    f"(>= {MIN_LENGTH}); compression ratios >= 1 like 2,4,8, or dms (the ratio DMS achieved)"
)


def spec_problems(spec: EvalSpec) -> list[str]:
    """Every problem with a spec (unknown names, bad numbers, empty lists)."""
    problems = [f"unknown task {t!r}" for t in spec.tasks if t not in TASKS]
    problems += [f"unknown policy {p!r}" for p in spec.policies if p not in POLICY_NAMES]
    problems += [f"length {n} is below {MIN_LENGTH}" for n in spec.lengths if n < MIN_LENGTH]
    problems += [f"compression ratio {c:g} is below 1" for c in spec.crs if not c >= 1]
    for key, values in (
        ("tasks", spec.tasks),
        ("lengths", spec.lengths),
        ("policies", spec.policies),
    ):
        if not values:
            problems.append(f"no {key} given")
    if not spec.crs and not spec.match_dms and any(p in BASELINES for p in spec.policies):
        problems.append("the baselines need at least one compression ratio (--cr)")
    if spec.match_dms and "dms" not in spec.policies:
        problems.append("--cr dms (the ratio DMS achieved) needs the dms policy")
    if spec.n_items < 1:
        problems.append(f"n={spec.n_items} must be >= 1")
    if spec.max_new_tokens < 1:
        problems.append(f"max_new_tokens={spec.max_new_tokens} must be >= 1")
    return problems


def split_list(text: str) -> tuple[str, ...]:
    """'a, b,,c' → ('a', 'b', 'c')."""
    return tuple(p.strip() for p in text.split(",") if p.strip())


def parse_length(text: str) -> int:
    """'4k' → 4096, '1.5k' → 1536, '2m' → 2097152, '1500' → 1500 (k = 1024)."""
    m = _LENGTH_RE.match(text.strip())
    if not m:
        raise ConfigError(f"length {text!r} is not a number like 1500, 1k or 4k", hint=_HINT)
    scale = {"": 1, "k": 1024, "m": 1024 * 1024}[m.group(2).lower()]
    return int(round(float(m.group(1)) * scale))


def parse_spec(
    *,
    tasks: str,
    lengths: str,
    policies: str,
    crs: str,
    n_items: int = 20,
    seed: int = 0,
    max_new_tokens: int = 64,
) -> EvalSpec:
    """An EvalSpec from comma-separated strings; one ConfigError listing every problem."""
    problems = []
    parsed_lengths: list[int] = []
    for part in split_list(lengths):
        try:
            parsed_lengths.append(parse_length(part))
        except ConfigError as err:
            problems.append(err.message)
    parsed_crs: list[float] = []
    parts = split_list(crs)
    match_dms = any(p.lower() == "dms" for p in parts)
    parts = tuple(p for p in parts if p.lower() != "dms")
    for part in parts:
        try:
            parsed_crs.append(float(part.rstrip("xX")))
        except ValueError:
            problems.append(f"compression ratio {part!r} is not a number")
    bad_lengths = len(parsed_lengths) < len(split_list(lengths))
    bad_crs = len(parsed_crs) < len(parts)
    spec = None
    try:  # a placeholder stands in for a list that failed to parse, so it is not "empty"
        spec = EvalSpec(
            tasks=split_list(tasks),
            lengths=tuple(parsed_lengths) or ((MIN_LENGTH,) if bad_lengths else ()),
            policies=split_list(policies),
            crs=tuple(parsed_crs) or ((1.0,) if bad_crs else ()),
            n_items=n_items,
            seed=seed,
            max_new_tokens=max_new_tokens,
            match_dms=match_dms,
        )
    except ConfigError as err:
        problems.append(err.message)
    if problems or spec is None:
        raise ConfigError("; ".join(problems), hint=_HINT)
    return spec
