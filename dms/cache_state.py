"""Packing a session cache into CPU tensors and back: the one format swaps and checkpoints share.

Tensors (independent of the pool's block size and device): per layer l, `layer.{l}.k`/`.v`
[sum_h lens, head_dim] in the pool's KV storage dtype (bf16 for an fp32 model under
kv_dtype "auto", so files are half the fp32 size) and `.pos`/`.expiry` [sum_h lens] int32 —
every stream's live slots, head-major, in slot order (so the window ring's stream-relative
slots stay valid) — and `.lens` [H_kv] int32; `ring_slot` [L, H_kv, w + 1] int64,
`ring_flag` [L, H_kv, w + 1] bool, `next_pos` [1] int64. The decision owed to the last token
needs no tensor: the next chunk's first token recomputes it. A state restores into a pool
of the same storage dtype; `convert=True` (what opening a saved session uses) converts K/V
of another storage dtype instead.
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


def unpack_state(
    state: dict[str, torch.Tensor], pool: KVPool, *, window: int, convert: bool = False
) -> SessionCache:
    """Rebuild a SessionCache in `pool` (any block size or device; same layout and storage dtype).

    Raises CheckpointError naming every mismatch (layers, KV heads, head_dim, dtype, window)
    and BudgetError when the pool lacks free blocks; in both cases the pool is unchanged.
    With `convert`, K/V stored in another floating dtype are converted to the pool's (exact
    when widening, e.g. bf16 into fp32; rounded when narrowing).
    """
    from agentrt.dms.session_cache import SessionCache

    layers, heads, head_dim, lens = validate_state(state)
    spec = pool.spec
    checks = [
        ("num_layers", layers, spec.num_layers),
        ("num_kv_heads", heads, spec.num_kv_heads),
        ("head_dim", head_dim, spec.head_dim),
        ("window", int(state["ring_slot"].shape[2]) - 1, window),
    ]
    if not convert:
        checks.insert(3, ("dtype", dtype_name(state["layer.0.k"].dtype), dtype_name(spec.dtype)))
    problems = [
        f"{name}: checkpoint {have}, pool {want}" for name, have, want in checks if have != want
    ]
    if problems:
        hint = "restore it with the model and DMS config it was saved with"
        saved = dtype_name(state["layer.0.k"].dtype)
        if saved != dtype_name(spec.dtype):
            hint += (
                f", and with K/V stored in {saved} (kv_dtype={saved!r}, --kv-dtype {saved} "
                f"or AGENTRT_KV_DTYPE={saved}), so a resumed session continues exactly"
            )
        raise CheckpointError(
            "checkpoint does not fit this KV pool: " + "; ".join(problems), hint=hint
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
    try:
        for layer in range(layers):
            for h in range(heads):
                # copy_layer_in writes every slot of these blocks (tails: zero K/V, UNUSED)
                n = spec.blocks_for_slots(lens[layer][h])
                cache.blocks[layer][h] = pool.allocate(n, fill=False)
            copy_layer_in(pool, cache.blocks[layer], lens[layer], state, layer)
            cache.lens[layer] = list(lens[layer])
    except BaseException:
        cache.free()
        raise
    cache.ring_slot = state["ring_slot"].to("cpu", torch.int64).clone()
    cache.ring_flag = state["ring_flag"].to("cpu", torch.bool).clone()
    cache.next_pos = int(state["next_pos"][0])
    return cache


def copy_layer_in(
    pool: KVPool,
    blocks: list[list[int]],
    lens: list[int],
    state: dict[str, torch.Tensor],
    layer: int,
) -> None:
    """Copy layer `layer`'s packed rows into its freshly allocated blocks, whole blocks at once.

    `blocks[h]` holds exactly blocks_for_slots(lens[h]) blocks of stream h. The rows are laid
    out block-major in a padded staging buffer ([n_blocks * block_size] rows; the tail of each
    stream's last block gets zero K/V and UNUSED pos/expiry, as `KVPool.allocate` leaves it),
    then K, V, pos and expiry each go into the pool with one `index_copy_` over the layer's
    blocks: the cost is that of moving the bytes, not one indexed write per slot.
    """
    from agentrt.dms.kv_pool import UNUSED

    ids = [b for head in blocks for b in head]
    if not ids:
        return
    bs, device = pool.block_size, pool.kv.device
    n_rows = len(ids) * bs
    k = state[f"layer.{layer}.k"].to(device, pool.kv.dtype)  # [sum lens, D]
    v = state[f"layer.{layer}.v"].to(device, pool.kv.dtype)
    pos = state[f"layer.{layer}.pos"].to(device, torch.int32)  # [sum lens]
    expiry = state[f"layer.{layer}.expiry"].to(device, torch.int32)
    if k.shape[0] != n_rows:  # some stream ends inside a block: stage block-aligned rows
        dest = staging_rows(blocks, lens, bs).to(device)
        k, v = _scatter_rows(k, dest, n_rows, 0), _scatter_rows(v, dest, n_rows, 0)
        pos = _scatter_rows(pos, dest, n_rows, UNUSED)
        expiry = _scatter_rows(expiry, dest, n_rows, UNUSED)
    index = torch.tensor(ids, dtype=torch.int64, device=device)
    shape = (len(ids), bs)
    pool.kv.select(1, 0).index_copy_(0, index, k.view(*shape, -1))
    pool.kv.select(1, 1).index_copy_(0, index, v.view(*shape, -1))
    pool.slot_pos.index_copy_(0, index, pos.view(shape))
    pool.slot_expiry.index_copy_(0, index, expiry.view(shape))


def staging_rows(blocks: list[list[int]], lens: list[int], bs: int) -> torch.Tensor:
    """[sum lens] int64: where packed row i lands in the block-aligned staging buffer."""
    counts = torch.tensor(lens, dtype=torch.int64)
    aligned = torch.tensor([len(b) * bs for b in blocks], dtype=torch.int64)
    shift = (torch.cumsum(aligned, 0) - aligned) - (torch.cumsum(counts, 0) - counts)
    return torch.arange(int(counts.sum()), dtype=torch.int64) + torch.repeat_interleave(
        shift, counts
    )


def _scatter_rows(rows: torch.Tensor, dest: torch.Tensor, n: int, fill: float) -> torch.Tensor:
    """`rows` [N, ...] placed at `dest` [N] of a new [n, ...] tensor filled with `fill`."""
    out = torch.full((n, *rows.shape[1:]), fill, dtype=rows.dtype, device=rows.device)
    out[dest] = rows
    return out


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
        lens.append(row)
    top = state["ring_slot"].amax(dim=-1)  # [L, H_kv]
    past = (top >= torch.tensor(lens, dtype=top.dtype)).any(dim=-1).nonzero().flatten()
    if past.numel():
        layer = int(past[0])
        raise CheckpointError(f"window ring of layer {layer} points past the live slots")
    return layers, heads, head_dim, lens


def dtype_name(dtype: torch.dtype) -> str:
    """'float32' for torch.float32."""
    return str(dtype).removeprefix("torch.")
