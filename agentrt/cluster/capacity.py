"""How many sessions one replica holds: the engine's own byte accounting (`CacheSpec`) applied
to a model's KV geometry, a context length and a DMS compression ratio.

`python -m agentrt.cluster.capacity` prints the table docs/SCALE_OUT.md shows (a 1B and an
8B Llama at 32k tokens, dense and 8x, on an 80 GiB GPU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

GIB = 1024**3


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a model that decide its KV bytes and its weight bytes."""

    name: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    params: float  # parameter count (weights are params x 2 bytes in bf16)


# The published configs (config.json) of the two Llama sizes the estimate covers.
LLAMA_1B = ModelShape("Llama-3.2-1B", num_layers=16, num_kv_heads=8, head_dim=64, params=1.24e9)
LLAMA_8B = ModelShape("Llama-3.1-8B", num_layers=32, num_kv_heads=8, head_dim=128, params=8.03e9)


@dataclass(frozen=True)
class Capacity:
    """One row of the estimate."""

    model: str
    tokens: int
    compression: float
    session_bytes: int  # pool bytes one session holds (blocks, K+V and slot metadata)
    kv_budget: int  # bytes of the GPU left for the KV pool
    sessions: int  # sessions that fit at once (resident; more wait swapped out)


def session_bytes(
    shape: ModelShape, tokens: int, compression: float, *, window: int = 512, block_size: int = 16
) -> int:
    """Pool bytes of one session after `tokens` tokens kept at `compression` (tokens / slots,
    window included, as `Session.stats()` reports it), through the engine's `CacheSpec`."""
    import torch

    from agentrt.dms.cache_spec import CacheSpec

    spec = CacheSpec(
        num_layers=shape.num_layers,
        num_kv_heads=shape.num_kv_heads,
        head_dim=shape.head_dim,
        block_size=block_size,
        dtype=torch.bfloat16,
        window=window if compression > 1 else 0,
    )
    kept = math.ceil(tokens / compression)
    slots = min(tokens, max(kept, spec.ring_len if compression > 1 else 0))
    return spec.bytes_for([slots] * (shape.num_layers * shape.num_kv_heads))


def estimate(
    shape: ModelShape,
    tokens: int,
    compression: float,
    *,
    gpu_bytes: int = 80 * GIB,
    headroom: float = 0.10,
) -> Capacity:
    """Sessions per GPU: (GPU bytes x (1 - headroom) - bf16 weights) // session bytes."""
    per = session_bytes(shape, tokens, compression)
    budget = int(gpu_bytes * (1 - headroom) - shape.params * 2)
    return Capacity(shape.name, tokens, compression, per, budget, max(budget, 0) // per)


def main() -> None:
    """Print the estimate table (Markdown)."""
    print("| model | context | DMS | KV per session | KV budget on 80 GiB | sessions per GPU |")
    print("|---|---|---|---|---|---|")
    for shape in (LLAMA_1B, LLAMA_8B):
        for ratio in (1.0, 8.0):
            c = estimate(shape, 32768, ratio)
            label = "dense" if ratio == 1 else f"{ratio:g}x"
            print(
                f"| {c.model} | {c.tokens // 1024}k | {label} | {c.session_bytes / GIB:.3f} GiB "
                f"| {c.kv_budget / GIB:.1f} GiB | {c.sessions} |"
            )


if __name__ == "__main__":
    main()
