"""Sampling: greedy, temperature, top-k/p, min-p, repetition penalty, determinism."""

from __future__ import annotations

import math

import pytest
import torch

from agentrt.engine.sampling import (
    SamplingParams,
    apply_repetition_penalty,
    filter_logits,
    new_generator,
    sample_token,
)
from agentrt.errors import ConfigError


def test_greedy_is_argmax():
    """Temperature 0 picks the largest logit."""
    logits = torch.tensor([0.1, 3.0, -2.0, 2.9])
    assert sample_token(logits, SamplingParams(), new_generator(0), []) == 1


def test_same_seed_same_tokens_different_seed_differs():
    """Sampling is a function of the generator state."""
    logits = torch.zeros(50)
    p = SamplingParams(temperature=1.0)
    a = [sample_token(logits, p, g, []) for g in [new_generator(1)] for _ in range(20)]
    g1 = new_generator(1)
    b = [sample_token(logits, p, g1, []) for _ in range(20)]
    g2 = new_generator(2)
    c = [sample_token(logits, p, g2, []) for _ in range(20)]
    assert a == b and a != c


def test_top_k_keeps_exactly_k():
    """top_k leaves k finite logits."""
    logits = torch.arange(10, dtype=torch.float32)
    out = filter_logits(logits, SamplingParams(temperature=1.0, top_k=3))
    assert torch.isfinite(out).sum() == 3 and torch.isfinite(out[7:]).all()


def test_top_p_keeps_smallest_prefix_reaching_p():
    """top_p keeps the most likely tokens whose mass first reaches p."""
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    out = filter_logits(probs.log(), SamplingParams(temperature=1.0, top_p=0.8))
    assert torch.isfinite(out).tolist() == [True, True, False, False]
    out = filter_logits(probs.log(), SamplingParams(temperature=1.0, top_p=0.81))
    assert torch.isfinite(out).tolist() == [True, True, True, False]


def test_min_p_drops_tokens_below_fraction_of_max():
    """min_p removes tokens with p < min_p · p_max."""
    probs = torch.tensor([0.6, 0.25, 0.1, 0.05])
    out = filter_logits(probs.log(), SamplingParams(temperature=1.0, min_p=0.2))
    assert torch.isfinite(out).tolist() == [True, True, False, False]


def test_temperature_scales_logits():
    """Temperature divides the logits."""
    logits = torch.tensor([1.0, 2.0])
    out = filter_logits(logits, SamplingParams(temperature=0.5))
    assert out.tolist() == [2.0, 4.0]


def test_repetition_penalty_matches_ctrl_rule():
    """Seen tokens: positive logits divided by p, negative multiplied."""
    logits = torch.tensor([2.0, -2.0, 1.0])
    out = apply_repetition_penalty(logits, [0, 1, 1], 2.0)
    assert out.tolist() == [1.0, -4.0, 1.0]


def test_sampled_frequencies_follow_the_distribution():
    """With temperature 1 the empirical frequencies approach softmax(logits)."""
    logits = torch.tensor([0.0, math.log(3.0)])
    g = new_generator(0)
    draws = [sample_token(logits, SamplingParams(temperature=1.0), g, []) for _ in range(2000)]
    assert abs(sum(draws) / 2000 - 0.75) < 0.04


@pytest.mark.parametrize(
    "bad",
    [
        dict(temperature=-1),
        dict(top_p=0),
        dict(top_k=-1),
        dict(min_p=1.0),
        dict(repetition_penalty=0),
    ],
)
def test_invalid_params_raise(bad):
    """Invalid values are ConfigErrors naming the field."""
    with pytest.raises(ConfigError, match=next(iter(bad))):
        SamplingParams(**bad)
