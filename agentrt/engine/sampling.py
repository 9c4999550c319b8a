"""Sampling parameters and the per-token sampler (greedy, temperature, top-k/p, min-p, penalties)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from agentrt.errors import ConfigError

# Below this, logits / T overflows; such temperatures are greedy in every practical sense.
MIN_TEMPERATURE = 1e-5


@dataclass(frozen=True)
class SamplingParams:
    """How to pick the next token and when to stop; temperature 0 means greedy."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()
    ignore_eos: bool = False
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        problems = []
        for key in ("max_new_tokens", "top_k"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{key}={value!r} must be a whole number (it is not rounded)")
        for key in ("temperature", "top_p", "min_p", "repetition_penalty"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{key}={value!r} must be a number")
        if any(isinstance(t, bool) or not hasattr(t, "__index__") for t in self.stop_token_ids):
            raise ConfigError(f"stop_token_ids={self.stop_token_ids!r} must all be whole numbers")
        if self.max_new_tokens < 0:
            problems.append(f"max_new_tokens={self.max_new_tokens} must be ≥ 0")
        if not self.temperature >= 0:  # also rejects NaN
            problems.append(f"temperature={self.temperature} must be ≥ 0")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p={self.top_p} must be in (0, 1]")
        if self.top_k < 0:
            problems.append(f"top_k={self.top_k} must be ≥ 0 (0 = off)")
        if not 0 <= self.min_p < 1:
            problems.append(f"min_p={self.min_p} must be in [0, 1)")
        if self.repetition_penalty <= 0:
            problems.append(f"repetition_penalty={self.repetition_penalty} must be > 0")
        if problems:
            raise ConfigError("invalid sampling parameters: " + "; ".join(problems))
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        object.__setattr__(self, "stop_strings", tuple(self.stop_strings))

    @property
    def greedy(self) -> bool:
        """True when sampling reduces to argmax."""
        return self.temperature < MIN_TEMPERATURE or self.top_k == 1


def apply_repetition_penalty(
    logits: torch.Tensor, history: list[int], penalty: float
) -> torch.Tensor:
    """CTRL-style penalty on tokens already seen: positive logits ÷ p, negative × p."""
    if penalty == 1.0 or not history:
        return logits
    idx = torch.tensor(sorted(set(history)), device=logits.device)
    picked = logits[idx]
    logits = logits.clone()
    logits[idx] = torch.where(picked > 0, picked / penalty, picked * penalty)
    return logits


def filter_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature, top-k, top-p and min-p applied to logits [V] (fp32); removed entries = −inf."""
    logits = logits / params.temperature
    if params.top_k > 0 and params.top_k < logits.numel():
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.min_p > 0:
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < params.min_p * probs.max(), float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = logits.sort(descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= params.top_p  # keep the token that crosses top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return logits


def sample_token(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator, history: list[int]
) -> int:
    """Pick the next token id from logits [V]; deterministic for a given generator state."""
    logits = apply_repetition_penalty(logits.float(), history, params.repetition_penalty)
    if params.greedy:
        return int(logits.argmax())
    probs = filter_logits(logits, params).softmax(-1).cpu()
    return int(torch.multinomial(probs, 1, generator=generator))


def new_generator(seed: int | None) -> torch.Generator:
    """A CPU generator seeded explicitly (or from torch's default seed source when None)."""
    gen = torch.Generator()
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed))
    return gen
