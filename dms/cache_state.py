"""Packing a session cache into CPU tensors and back: the one format swaps and checkpoints share.

Tensors (independent of the pool's block size and device): per layer l, `layer.{l}.k`/`.v`
[sum_h lens, head_dim] (model dtype) and `.pos`/`.expiry` [sum_h lens] int32 — every
stream's live slots, head-major, in slot order (so the window ring's stream-relative slots
stay valid) — and `.lens` [H_kv] int32; `ring_slot` [L, H_kv, w + 1] int64, `ring_flag`
[L, H_kv, w + 1] bool, `next_pos` [1] int64. The decision owed to the last token needs no
tensor: the next chunk's first token recomputes it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from agentrt.errors import BudgetError, CheckpointError

if TYPE_CHECKING:
    from agentrt.dms.kv_pool import KVPool
    from agentrt.dms.session_cache import SessionCache

STATE_GLOBALS = ("ring_slot", "ring_flag", "next_pos")
LAYER_FIELDS = ("k", "v", "pos", "expiry", "lens")


def pack_state(cache: SessionCache) -> dict[str, torch.Tensor]:
    """Every stream's live slots as CPU tensors (see the module docstring)."""
    pool = cache.pool
    bs = pool.block_size
    state: dict[str, torch.Tensor] = {}
    for layer in range(cache.num_layers):
        flat = stream_slots(cache.blocks[layer], cache.lens[layer], bs).to(pool.kv.device)
        blocks, offsets = flat // bs, flat % bs
        state[f"layer.{layer}.k"] = pool.kv[blocks, 0, offsets].cpu()
        state[f"layer.{layer}.v"] = pool.kv[blocks, 1, offsets].cpu()
        state[f"layer.{layer}.pos"] = pool.slot_pos[blocks, offsets].cpu()
        state[f"layer.{layer}.expiry"] = pool.slot_expiry[blocks, offsets].cpu()
        state[f"layer.{layer}.lens"] = torch.tensor(cache.lens[layer], dtype=torch.int32)
    state["ring_slot"] = cache.ring_slot.detach().to("cpu", torch.int64).clone()
    state["ring_flag"] = cache.ring_flag.detach().to("cpu", torch.bool).clone()
    state["next_pos"] = torch.tensor([cache.next_pos], dtype=torch.int64)
    return state


def unpack_state(state: dict[str, torch.Tensor], pool: KVPool, *, window: int) -> SessionCache:
    """Rebuild a SessionCache in `pool` (any block size or device; same layout and dtype).

    Raises CheckpointError naming every mismatch (layers, KV heads, head_dim, dtype, window)
    and BudgetError when the pool lacks free blocks; in both cases the pool is unchanged.
    """
    from agentrt.dms.session_cache import SessionCache
    from agentrt.kernels import write_kv_slots

    layers, heads, head_dim, lens = validate_state(state)
    spec = pool.spec
    problems = [
        f"{name}: checkpoint {have}, pool {want}"
        for name, have, want in (
            ("num_layers", layers, spec.num_layers),
            ("num_kv_heads", heads, spec.num_kv_heads),
            ("head_dim", head_dim, spec.head_dim),
            ("dtype", dtype_name(state["layer.0.k"].dtype), dtype_name(spec.dtype)),
            ("window", int(state["ring_slot"].shape[2]) - 1, window),
        )
        if have != want
    ]
    if problems:
        raise CheckpointError(
            "checkpoint does not fit this KV pool: " + "; ".join(problems),
            hint="restore it with the model and DMS config it was saved with",
        )
    need = spec.blocks_for_streams(lens)
    if need > pool.num_free:
        raise BudgetError(
            f"restoring this checkpoint needs {need} KV blocks "
            f"({spec.bytes_for([n for row in lens for n in row])} bytes) but only {pool.num_free} of "
            f"{pool.num_blocks} are free",
            hint="raise kv_budget, or close or swap out idle sessions",
        )
    cache = SessionCache(pool, layers, heads, window)
    device = pool.kv.device
    bs = pool.block_size
    try:
        for layer in range(layers):
            for h in range(heads):
                cache.blocks[layer][h] = pool.allocate(spec.blocks_for_slots(lens[layer][h]))
            flat = stream_slots(cache.blocks[layer], lens[layer], bs).to(device)
            if flat.numel():
                write_kv_slots(
                    pool.kv,
                    pool.slot_expiry,
                    flat,
                    state[f"layer.{layer}.k"].to(device),
                    state[f"layer.{layer}.v"].to(device),
                    state[f"layer.{layer}.expiry"].to(device, torch.int32),
                )
                pool.pos_flat[flat] = state[f"layer.{layer}.pos"].to(device, torch.int32)
            cache.lens[layer] = list(lens[layer])
    except BaseException:
        cache.free()
        raise
    cache.ring_slot = state["ring_slot"].to("cpu", torch.int64).clone()
    cache.ring_flag = state["ring_flag"].to("cpu", torch.bool).clone()
    cache.next_pos = int(state["next_pos"][0])
    return cache


def stream_slots(blocks: list[list[int]], lens: list[int], bs: int) -> torch.Tensor:
    """[sum lens] int64 flat pool slots of slots 0..len−1 of each head's stream, head-major."""
    parts = []
    for head_blocks, n in zip(blocks, lens, strict=True):
        if n == 0:
            continue
        idx = torch.arange(n, dtype=torch.int64)
        table = torch.tensor(head_blocks, dtype=torch.int64)
        parts.append(table[idx // bs] * bs + idx % bs)
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)


def validate_state(state: dict[str, torch.Tensor]) -> tuple[int, int, int, list[list[int]]]:
    """Check a cache state's structure; returns (layers, kv heads, head_dim, lens per stream)."""
    missing = [k for k in STATE_GLOBALS if k not in state]
    if missing:
        raise CheckpointError(f"cache state lacks tensors {missing}")
    ring = state["ring_slot"]
    if ring.dim() != 3 or tuple(state["ring_flag"].shape) != tuple(ring.shape):
        raise CheckpointError(f"cache state ring shapes {tuple(ring.shape)} are inconsistent")
    layers, heads, _ = ring.shape
    names = [f"layer.{layer}.{f}" for layer in range(layers) for f in LAYER_FIELDS]
    missing = [n for n in names if n not in state]
    if missing or layers == 0:
        raise CheckpointError(f"cache state lacks tensors {missing[:4]} (of {len(missing)})")
    lens, head_dim = [], int(state["layer.0.k"].shape[-1])
    for layer in range(layers):
        row = [int(n) for n in state[f"layer.{layer}.lens"].tolist()]
        total = sum(row)
        shapes = [tuple(state[f"layer.{layer}.{f}"].shape) for f in LAYER_FIELDS[:4]]
        want = [(total, head_dim), (total, head_dim), (total,), (total,)]
        if len(row) != heads or min(row, default=0) < 0 or shapes != want:
            raise CheckpointError(f"cache state of layer {layer} is inconsistent: lens {row}")
        top = state["ring_slot"][layer].max(dim=-1).values.tolist()
        if any(t >= n for t, n in zip(top, row, strict=True)):
            raise CheckpointError(f"window ring of layer {layer} points past the live slots")
        lens.append(row)
    return layers, heads, head_dim, lens


def dtype_name(dtype: torch.dtype) -> str:
    """'float32' for torch.float32."""
    return str(dtype).removeprefix("torch.")
