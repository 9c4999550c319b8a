"""Every baseline with its [easy, hard] kwargs: adding a policy adds one line (kvpress-style)."""

from __future__ import annotations

from typing import Any

import pytest

from agentrt.dms.policies import (
    DensePolicy,
    H2OPolicy,
    SlidingWindowPolicy,
    StreamingLLMPolicy,
    TOVAPolicy,
)

POLICY_MATRIX: list[tuple[type, list[dict[str, Any]]]] = [
    (DensePolicy, [{}]),
    (SlidingWindowPolicy, [{"budget": 7}, {"budget": 1}]),
    (StreamingLLMPolicy, [{"budget": 9}, {"budget": 3, "sinks": 2}]),
    (TOVAPolicy, [{"budget": 8}, {"budget": 1}]),
    (H2OPolicy, [{"budget": 8, "recent": 3}, {"budget": 3, "recent": 0}]),
]


def policy_cases() -> list[Any]:
    """One pytest.param(cls, kwargs) per matrix entry, with ids like `TOVAPolicy-hard`."""
    return [
        pytest.param(cls, kwargs, id=f"{cls.__name__}-{'easy' if i == 0 else 'hard'}")
        for cls, variants in POLICY_MATRIX
        for i, kwargs in enumerate(variants)
    ]
