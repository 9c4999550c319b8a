"""`DMSConfig`: the DMS hyper-parameters, with NVIDIA's config.json key names and defaults."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from agentrt.errors import ConfigError

# Keys NVIDIA's configs carry that change nothing at inference (documentation or
# implementation details of their reference code, and `auto_map`, which points at their
# remote-code classes); accepted and ignored.
IGNORED_KEYS = frozenset(
    {
        "auto_map",
        "dms_cr",
        "dms_compile_limit",
        "dms_manual_inference_mode",
        "dms_preallocate_for_tokens",
        "dms_paged_attention_block_size",
    }
)
_ALPHA_PER = ("head", "layer")


@dataclass(frozen=True)
class DMSConfig:
    """DMS hyper-parameters; field `x` is stored in config.json as `dms_x`.

    - alpha_scale (s) and initial_alpha_offset (b): decision logit z = s·r − b, evict iff z > 0.
    - window_size (w): a marked key j stays visible to queries i ≤ j + w (w + 1 newest tokens
      are always attended).
    - separate_alpha: False = q-neuron flavour (channel d−1 of the first query head of each
      GQA group), True = adapter flavour (`dms_proj_alpha_norm` + `dms_proj_alpha`).
    - alpha_per: "head" (one decision per KV head) or "layer" (head 0's decision for all).
    - tau: Gumbel-sigmoid temperature (training only).
    - disable_eviction: decide nothing, attend everything (the teacher / dense mode).
    - chunked_prefill: optional prefill chunk size in tokens (NVIDIA's `dms_chunked_prefill`).
    """

    alpha_scale: float = 100.0
    initial_alpha_offset: float = 5.0
    window_size: int = 512
    separate_alpha: bool = False
    alpha_per: str = "head"
    tau: float = 0.1
    disable_eviction: bool = False
    chunked_prefill: int | None = None

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError("invalid DMS config: " + "; ".join(problems))

    def problems(self) -> list[str]:
        """Every reason this config is invalid (empty when valid)."""
        out = []
        if self.alpha_per not in _ALPHA_PER:
            out.append(f"dms_alpha_per={self.alpha_per!r} must be one of {_ALPHA_PER}")
        if not isinstance(self.window_size, int) or self.window_size < 0:
            out.append(f"dms_window_size={self.window_size!r} must be an integer ≥ 0")
        if not self.tau > 0:
            out.append(f"dms_tau={self.tau!r} must be > 0")
        if not self.alpha_scale > 0:
            out.append(f"dms_alpha_scale={self.alpha_scale!r} must be > 0")
        if self.chunked_prefill is not None and (
            not isinstance(self.chunked_prefill, int) or self.chunked_prefill < 1
        ):
            out.append(f"dms_chunked_prefill={self.chunked_prefill!r} must be null or ≥ 1")
        return out

    @property
    def ring_len(self) -> int:
        """W = w + 1, the number of newest tokens that are always attended."""
        return self.window_size + 1

    @property
    def flavour(self) -> str:
        """ "adapter" or "qneuron"."""
        return "adapter" if self.separate_alpha else "qneuron"

    def replace(self, **changes: Any) -> DMSConfig:
        """A copy with some fields changed (validated)."""
        return replace(self, **changes)

    def to_hf_dict(self) -> dict[str, Any]:
        """The `dms_*` keys to write into a model's config.json."""
        return {f"dms_{k}": v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, strict: bool = True) -> DMSConfig:
        """Build from `dms_*` keys (or bare field names); unknown dms keys are an error if strict."""
        known = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        unknown = []
        for key, value in values.items():
            name = key[4:] if key.startswith("dms_") else key
            if key in IGNORED_KEYS:
                continue
            if name in known:
                kwargs[name] = value
            elif key.startswith("dms_") or strict:
                unknown.append(key)
        if unknown and strict:
            raise ConfigError(
                f"unknown DMS config keys: {', '.join(sorted(unknown))}",
                hint=f"known keys: {', '.join('dms_' + k for k in sorted(known))}",
            )
        return cls(**kwargs)

    @classmethod
    def from_hf_config(cls, hf_config: Any) -> DMSConfig | None:
        """Read the `dms_*` attributes of a transformers config; None when it has none."""
        raw = hf_config.to_dict() if hasattr(hf_config, "to_dict") else dict(hf_config)
        dms = {k: v for k, v in raw.items() if k.startswith("dms_")}
        if not dms:
            return None
        return cls.from_dict(dms, strict=False)

    def write_to_hf_config(self, hf_config: Any) -> None:
        """Set the `dms_*` attributes on a transformers config (for save_pretrained)."""
        for key, value in self.to_hf_dict().items():
            setattr(hf_config, key, value)
