"""`make_policy`: build a cache policy by name, with every problem in one ConfigError."""

from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any

from agentrt.dms.policies.dense import DensePolicy
from agentrt.dms.policies.h2o import H2OPolicy
from agentrt.dms.policies.sliding_window import SlidingWindowPolicy
from agentrt.dms.policies.streaming_llm import StreamingLLMPolicy
from agentrt.dms.policies.tova import TOVAPolicy
from agentrt.dms.serving import CachePolicy
from agentrt.errors import ConfigError

POLICIES: dict[str, type] = {
    "dense": DensePolicy,
    "window": SlidingWindowPolicy,
    "streaming": StreamingLLMPolicy,
    "tova": TOVAPolicy,
    "h2o": H2OPolicy,
}
POLICY_NAMES: tuple[str, ...] = ("dms", *POLICIES)  # "dms": the model's own decisions


def policy_params(name: str) -> tuple[list[str], list[str]]:
    """(required, optional) keyword names of the policy called `name`."""
    required, optional = [], []
    for f in fields(POLICIES[name]):
        if f.init:
            bare = f.default is MISSING and f.default_factory is MISSING
            (required if bare else optional).append(f.name)
    return required, optional


def make_policy(name: str, **kwargs: Any) -> CachePolicy | None:
    """The policy `name` built from kwargs; "dms" → None (serve with the model's own decisions)."""
    if name == "dms":
        if kwargs:
            raise ConfigError(
                f"cache policy 'dms' takes no parameters, got {sorted(kwargs)}",
                hint="the DMS window comes from the model's config (dms_window_size)",
            )
        return None
    if name not in POLICIES:
        raise ConfigError(
            f"unknown cache policy {name!r}",
            hint=f"choose one of: {', '.join(POLICY_NAMES)}",
        )
    required, optional = policy_params(name)
    problems = [f"unknown parameter {k!r}" for k in sorted(set(kwargs) - {*required, *optional})]
    problems += [f"missing parameter {k!r}" for k in required if k not in kwargs]
    if problems:
        valid = ", ".join([*required, *(f"{k} (optional)" for k in optional)]) or "none"
        raise ConfigError(
            f"cache policy {name!r}: " + "; ".join(problems),
            hint=f"{name} takes: {valid}",
        )
    return POLICIES[name](**kwargs)
