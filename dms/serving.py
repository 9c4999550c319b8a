"""The serving forward: one ragged step over many sessions on the paged DMS cache.

Per layer: project the new tokens of every session (packed), compute decisions, settle
the decision owed to each session's last cached token, then attend and write:
- prefill mode (any chunk lengths): `dms_prefill_attention` over (cached slots ∪ chunk)
  with per-key expiry, then only survivors are written (holes reused, tail compacted); the
  chunk's own K/V are rounded through the pool's storage dtype first, so every query sees
  keys exactly as the pool stores them (whole, chunked and token-by-token prefill agree);
  which tokens survive depends on the chunk's decisions, so each layer's plan is made on
  the host after its decisions;
- decode mode (every session brings one token): the slot of every new token is known
  before the forward (the token leaving the window had its flag settled earlier), so the
  block tables, lengths and slot maps of all layers are built once per step on the device.
  Per layer: write the new K/V, apply the owed flag of the previous token with a masked
  write, then `paged_decode_attention` over all held slots (exactly the visible ones).
  The decisions come back to the host once, after the last layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from agentrt.dms.gating import hard_decisions
from agentrt.dms.kv_pool import KEEP_FOREVER
from agentrt.dms.masks import key_flags
from agentrt.dms.projections import (
    finish_layer,
    lm_logits,
    project_layer,
    rope_tables,
    signed_rope,
)
from agentrt.dms.session_cache import LayerPlan, SessionCache
from agentrt.errors import BudgetError
from agentrt.kernels import (
    choose_num_splits,
    copy_kv_slots,
    dms_prefill_attention,
    num_sms,
    paged_decode_attention,
    write_kv_slots,
)
from agentrt.kernels.decode_rows import (
    decode_attention_blocks,
    kv_rows,
    padding_mask,
    rows_path,
    write_kv_rows,
)


class CachePolicy(Protocol):
    """A training-free eviction baseline plugged into the serving step (see dms/policies/)."""

    name: str
    window: int  # w of the DMS rule the caches of this policy are built with

    def decide(self, layer: int, positions: torch.Tensor, decisions: torch.Tensor) -> torch.Tensor:
        """Decisions δ [N, H_kv] bool for new tokens at positions [N] (model's δ given)."""
        ...

    def after_layer(
        self, layer: int, items: list[StepItem], q: torch.Tensor, scale: float, cu: list[int]
    ) -> None:
        """Called after the layer's attention and writes (q [N, H_q, d]); may evict slots."""
        ...


@dataclass
class StepItem:
    """One session's share of a step: new token ids (a prefill chunk or one decode token)."""

    cache: SessionCache
    token_ids: torch.Tensor  # [T] int64, T ≥ 1
    all_logits: bool = False  # return logits for every new token instead of the last


def check_budget(items: list[StepItem]) -> None:
    """Refuse a step the pool cannot hold (upper bound: appends + copy-on-write), changing nothing."""
    if not items:
        return
    pool = items[0].cache.pool
    need = sum(it.cache.blocks_needed(int(it.token_ids.numel())) for it in items)
    if need > pool.num_free:
        raise BudgetError(
            f"this step may need {need} more KV blocks ({need * pool.bytes_per_block} bytes) "
            f"but only {pool.num_free} of {pool.num_blocks} are free",
            hint="raise kv_budget, use a smaller prefill chunk, or free/swap other sessions",
        )


@torch.no_grad()
def serve_step(
    model,
    items: list[StepItem],
    *,
    decode_kernel: bool | None = None,
    policy: CachePolicy | None = None,
) -> list[torch.Tensor]:
    """Run one ragged step; returns per item logits [V] (last token) or [T, V] (all_logits).

    All caches of one step must share a pool and a window. `policy` replaces the model's
    decisions (rule-based baselines) and may evict after attention (score-based ones).
    """
    if not items:
        return []
    for it in items:
        if it.token_ids.dim() != 1 or it.token_ids.numel() == 0:
            raise ValueError(
                f"token_ids must be a non-empty 1-D tensor, got {tuple(it.token_ids.shape)}"
            )
        if it.cache.closed:
            raise ValueError("the session cache was freed")
    window = items[0].cache.window
    if any(it.cache.window != window or it.cache.pool is not items[0].cache.pool for it in items):
        raise ValueError("all sessions of one step must share a pool and a window")
    if policy is not None and policy.window != window:
        raise ValueError(
            f"policy {policy.name!r} needs caches built with window={policy.window}, got {window}; "
            "use model.new_cache(pool, window=policy.window)"
        )
    check_budget(items)
    hf, device = model.hf, model.device
    lengths = [int(it.token_ids.numel()) for it in items]
    if decode_kernel is None:
        decode_kernel = all(n == 1 for n in lengths)
    elif decode_kernel and any(n != 1 for n in lengths):
        raise ValueError("decode_kernel=True needs exactly one token per session")
    starts = [it.cache.next_pos for it in items]
    ids = torch.cat([it.token_ids.to(device) for it in items])[None]  # [1, N]
    positions = torch.cat(
        [torch.arange(s, s + n, device=device) for s, n in zip(starts, lengths, strict=True)]
    )
    cu = torch.tensor(
        [0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device
    )
    h = hf.model.embed_tokens(ids)  # [1, N, hidden]
    cos, sin = rope_tables(hf, h, positions[None])
    rope = signed_rope(cos, sin)
    if decode_kernel and (window >= 1 or (not model.evicting and policy is None)):
        h = _decode_layers(model, items, starts, window, h, rope, positions, cu, policy)
    else:
        h = _chunk_layers(
            model, items, starts, lengths, window, h, rope, positions, cu, policy, decode_kernel
        )
    for it, n in zip(items, lengths, strict=True):
        it.cache.next_pos += n
    # the LM head only over the rows asked for: a prefill chunk wants its last token's
    # logits, and [N, V] for all N would cost as much as a few layers
    spans = [
        (s, e) if it.all_logits else (e - 1, e)
        for it, s, e in zip(items, cu[:-1].tolist(), cu[1:].tolist(), strict=True)
    ]
    if sum(e - s for s, e in spans) == h.shape[1]:  # every row (decode, or all_logits)
        wanted = h[0]
    else:
        rows = [r for s, e in spans for r in range(s, e)]
        wanted = h[0].index_select(0, torch.tensor(rows, device=device))
    logits = lm_logits(hf, wanted)  # [rows, V]
    out, offset = [], 0
    for it, (s, e) in zip(items, spans, strict=True):
        out.append(logits[offset : offset + e - s] if it.all_logits else logits[offset])
        offset += e - s
    return out


@dataclass
class DecodeMetadata:
    """A decode step's cache addressing for every layer, built once before the forward."""

    tables: torch.Tensor  # [L, S, H_kv, max_blocks] int32 block tables (after the writes)
    lens: torch.Tensor  # [L, S, H_kv] int32 slots held (after the writes)
    write_idx: torch.Tensor  # [L, S·H_kv] int64 flat pool slot of each new key
    write_pos: torch.Tensor  # [S·H_kv] int32 absolute position of each new key
    longest: list[int]  # per layer: the longest stream (split-K choice without a sync)
    slots: list  # per session: its DecodeSlots (host)
    # the owed flags of tokens start − 1 (where held), layer by layer: entries
    # owed_bounds[l]:owed_bounds[l + 1] belong to layer l
    owed_idx: torch.Tensor  # [M] int64 flat pool slot of each
    owed_rows: torch.Tensor  # [M] int64 its row in the [L·S·H_kv] decisions of the step
    owed_layer_rows: torch.Tensor  # [M] int64 its row in its layer's [S·H_kv] decisions
    owed_expiry: torch.Tensor  # [M] int32 expiry if marked: start − 1 + w
    owed_bounds: list[int]  # [L + 1] offsets of each layer's entries
    tables_host: np.ndarray  # [L, S, H_kv, max_blocks] int64, the host copy of `tables`
    lens_host: np.ndarray  # [L, S, H_kv] int64, the host copy of `lens`


def decode_metadata(
    items: list[StepItem], starts: list[int], window: int, device: torch.device
) -> DecodeMetadata:
    """Plan one decode token per session for all layers (host), then move it to `device` once."""
    pool = items[0].cache.pool
    bs = pool.block_size
    plans = [it.cache.plan_decode_all(start) for it, start in zip(items, starts, strict=True)]
    L, H = plans[0].slot.shape
    width = max(p.table.shape[2] for p in plans)
    tables = np.zeros((L, len(items), H, width), dtype=np.int64)
    for i, p in enumerate(plans):
        tables[:, i, :, : p.table.shape[2]] = p.table
    slot = np.stack([p.slot for p in plans], axis=1)  # [L, S, H]
    prev = np.stack([p.prev for p in plans], axis=1)  # [L, S, H]
    lens = np.stack([p.lens for p in plans], axis=1)  # [L, S, H]
    # entries past a stream's blocks name its first block (never a block of another stream
    # or one never allocated), so a whole-block gather reads only finite, zero-initialised K/V
    owned = -(-lens // bs)  # ≥ 1: every stream holds the new token
    tables = np.where(np.arange(width) < owned[..., None], tables, tables[..., :1])
    write = np.take_along_axis(tables, (slot // bs)[..., None], axis=3)[..., 0] * bs + slot % bs
    safe = np.maximum(prev, 0)
    prev_flat = np.take_along_axis(tables, (safe // bs)[..., None], axis=3)[..., 0] * bs + safe % bs
    expiry = np.broadcast_to(
        np.asarray(starts, dtype=np.int64)[:, None] - 1 + window, (len(items), H)
    )
    valid = prev.reshape(L, -1) >= 0  # [L, S·H]
    owed = np.flatnonzero(valid)  # rows of the [L·S·H] decisions whose previous token is held
    owed_expiry = np.broadcast_to(expiry.reshape(-1), valid.shape).reshape(-1)[owed]
    n = valid.shape[1]
    positions = np.repeat(np.asarray(starts, dtype=np.int32), H)
    return DecodeMetadata(
        tables=torch.from_numpy(tables.astype(np.int32)).to(device),
        lens=torch.from_numpy(lens.astype(np.int32)).to(device),
        write_idx=torch.from_numpy(write.reshape(L, -1)).to(device),
        write_pos=torch.from_numpy(positions).to(device),
        longest=lens.reshape(L, -1).max(axis=1).tolist(),
        slots=plans,
        owed_idx=torch.from_numpy(prev_flat.reshape(-1)[owed]).to(device),
        owed_rows=torch.from_numpy(owed).to(device),
        owed_layer_rows=torch.from_numpy(owed % n).to(device),
        owed_expiry=torch.from_numpy(owed_expiry.astype(np.int32)).to(device),
        owed_bounds=np.searchsorted(owed, np.arange(L + 1) * n).tolist(),
        tables_host=tables,
        lens_host=lens,
    )


def _layer_decisions(model, qkv, layer_idx: int, positions, policy) -> torch.Tensor:
    """Hard eviction decisions [tokens, H_kv] of one layer (none when not evicting), policy applied."""
    if model.evicting:
        dec = hard_decisions(qkv.logits[0])
    else:
        tokens = qkv.q.shape[1]
        dec = torch.zeros(tokens, model.arch.num_kv_heads, dtype=torch.bool, device=model.device)
    if policy is not None:
        dec = policy.decide(layer_idx, positions, dec)
    return dec


class _RowsDecode:
    """The CPU decode step's pool access for all layers, addressed once per step.

    Before the forward: every new key's expiry (owed, so kept) and position for all layers
    in one write each. Per layer: two indexed copies for K/V and one gather + SDPA. After
    the last layer: every owed flag in one masked write. Used without a policy only (a
    score-based policy moves slots between layers).
    """

    def __init__(self, pool, meta: DecodeMetadata, num_layers: int, dtype: torch.dtype) -> None:
        self.pool, self.meta = pool, meta
        flat = meta.write_idx.reshape(-1)
        pool.expiry_flat[flat] = KEEP_FOREVER
        pool.pos_flat[flat] = meta.write_pos.repeat(num_layers)
        self.k_rows = kv_rows(meta.write_idx, pool.block_size)  # [L, S·H]
        self.v_rows = self.k_rows + pool.block_size
        bs = pool.block_size
        self.blocks = [
            torch.from_numpy(np.ascontiguousarray(meta.tables_host[layer, :, :, : -(-n // bs)])).to(
                pool.kv.device
            )
            for layer, n in enumerate(meta.longest)
        ]
        # one additive padding mask for all layers; a layer whose streams all hold the same
        # number of slots (a dense cache) needs none
        lens = meta.lens_host.reshape(num_layers, -1)
        self.padded = (lens.min(axis=1) < lens.max(axis=1)).tolist()
        self.mask = None
        if any(self.padded):
            ct = torch.promote_types(dtype, torch.float32)  # attention's compute dtype
            self.mask = padding_mask(meta.lens, max(meta.longest), ct)

    def layer(self, layer_idx: int, q, k, v, scale: float) -> torch.Tensor:
        """Write this layer's new K/V, then attend every held slot."""
        n = k.shape[0] * k.shape[1]
        write_kv_rows(
            self.pool.kv,
            self.k_rows[layer_idx],
            self.v_rows[layer_idx],
            k.reshape(n, -1),
            v.reshape(n, -1),
        )
        longest = self.meta.longest[layer_idx]
        padded = self.padded[layer_idx]
        return decode_attention_blocks(
            q,
            self.pool.kv,
            self.blocks[layer_idx],
            self.meta.lens[layer_idx],
            longest,
            scale,
            mask=self.mask[layer_idx, ..., :longest] if padded else None,
            padded=padded,
            guarded=False,  # own blocks only, zeroed when allocated; no stream is empty
        )

    def settle_flags(self, decisions: torch.Tensor) -> None:
        """The owed flag of every layer's token start − 1 (decisions [L, S, H_kv])."""
        meta = self.meta
        if meta.owed_idx.numel():
            marked = decisions.reshape(-1)[meta.owed_rows]
            keep = torch.full_like(meta.owed_expiry, KEEP_FOREVER)
            self.pool.expiry_flat[meta.owed_idx] = torch.where(marked, meta.owed_expiry, keep)


def _decode_layers(model, items, starts, window, h, rope, positions, cu, policy):
    """All layers of a decode step: device-resident addressing, one host sync at the end."""
    arch, dms, hf, device = model.arch, model.dms, model.hf, model.device
    pool = items[0].cache.pool
    meta = decode_metadata(items, starts, window, device)
    rows = None
    if policy is None and rows_path(pool.kv):
        rows = _RowsDecode(pool, meta, arch.num_layers, model.dtype)
    keep = torch.full_like(meta.write_pos, KEEP_FOREVER)  # new keys: their own flag is owed
    n_streams = len(items) * arch.num_kv_heads
    sms = num_sms(device) if device.type == "cuda" else 0
    decisions = []
    for layer_idx, layer in enumerate(hf.model.layers):
        qkv = project_layer(layer, h, None, None, arch, dms, rope)
        q, k, v = qkv.q[0], qkv.k[0], qkv.v[0]  # [S, H, d]
        dec = _layer_decisions(model, qkv, layer_idx, positions, policy)  # [S, H_kv]
        decisions.append(dec)
        if rows is not None:
            attn = rows.layer(layer_idx, q, k, v, layer.self_attn.scaling)
            h = finish_layer(layer, h, attn.reshape(1, attn.shape[0], -1))
            continue
        idx = meta.write_idx[layer_idx]
        write_kv_slots(
            pool.kv,
            pool.slot_expiry,
            idx,
            k.reshape(n_streams, -1).to(pool.kv.dtype),
            v.reshape(n_streams, -1).to(pool.kv.dtype),
            keep,
        )
        pool.pos_flat[idx] = meta.write_pos
        a, b = meta.owed_bounds[layer_idx], meta.owed_bounds[layer_idx + 1]
        if b > a:  # the owed flag of token start − 1, as a masked write
            marked = dec.reshape(-1)[meta.owed_layer_rows[a:b]]
            expiry = meta.owed_expiry[a:b]
            pool.expiry_flat[meta.owed_idx[a:b]] = torch.where(
                marked, expiry, torch.full_like(expiry, KEEP_FOREVER)
            )
        splits = None
        if device.type == "cuda":  # host-side lengths: no device sync to pick split-K
            splits = choose_num_splits(meta.longest[layer_idx], n_streams, sms)
        attn = paged_decode_attention(
            q,
            pool.kv,
            meta.tables[layer_idx],
            meta.lens[layer_idx],
            layer.self_attn.scaling,
            num_splits=splits,
        )
        if policy is not None:
            policy.after_layer(layer_idx, items, q, layer.self_attn.scaling, cu.tolist())
        h = finish_layer(layer, h, attn.reshape(1, attn.shape[0], -1))
    stacked = torch.stack(decisions)  # [L, S, H_kv]
    if rows is not None:
        rows.settle_flags(stacked)
    settled = stacked.cpu().numpy()  # the one sync of the step
    for i, (it, start) in enumerate(zip(items, starts, strict=True)):
        it.cache.settle_decode(start, meta.slots[i].prev, settled[:, i])
    return h


def _chunk_layers(
    model, items, starts, lengths, window, h, rope, positions, cu, policy, decode_kernel
):
    """All layers of a step with prefill chunks: each layer's plan follows its decisions."""
    arch, dms, hf, device = model.arch, model.dms, model.hf, model.device
    for layer_idx, layer in enumerate(hf.model.layers):
        qkv = project_layer(layer, h, None, None, arch, dms, rope)
        q, k, v = qkv.q[0], qkv.k[0], qkv.v[0]  # [N, H, d]
        dec = _layer_decisions(model, qkv, layer_idx, positions, policy)  # [N, H_kv]
        old_lens = [list(it.cache.lens[layer_idx]) for it in items]  # what the kernel may read
        plans, new_expiry = _plan(items, layer_idx, dec, starts, lengths, window)
        _apply_flags(items[0].cache.pool, plans)
        if decode_kernel:
            _apply_writes(items[0].cache.pool, plans, k, v, cu)
            tables, lens = _tables(items, layer_idx, None)
            splits = None
            if device.type == "cuda":  # host-side lengths: no device sync to pick split-K
                longest = max(max(it.cache.lens[layer_idx]) for it in items)
                splits = choose_num_splits(longest, lens.numel(), num_sms(device))
            attn = paged_decode_attention(
                q, items[0].cache.pool.kv, tables, lens, layer.self_attn.scaling, num_splits=splits
            )
        else:
            tables, lens = _tables(items, layer_idx, old_lens)
            pool = items[0].cache.pool
            k_seen, v_seen = as_stored(k, pool.kv.dtype), as_stored(v, pool.kv.dtype)
            attn = dms_prefill_attention(
                q,
                k_seen,
                v_seen,
                new_expiry,
                positions.to(torch.int32),
                cu,
                pool.kv,
                pool.slot_expiry,
                tables,
                lens,
                layer.self_attn.scaling,
            )
            _apply_writes(pool, plans, k, v, cu)
        for it, plan in zip(items, plans, strict=True):
            it.cache.release_shrunk(layer_idx, plan)
        if policy is not None:
            policy.after_layer(layer_idx, items, q, layer.self_attn.scaling, cu.tolist())
        h = finish_layer(layer, h, attn.reshape(1, attn.shape[0], -1))
    return h


def as_stored(x: torch.Tensor, storage: torch.dtype) -> torch.Tensor:
    """`x` rounded through the KV storage dtype, back in its own dtype (itself when they match).

    A chunk's own keys and values are seen by its queries as the pool will hold them, so
    prefill (whole or chunked) and token-by-token decode attend the same values.
    """
    return x if x.dtype == storage else x.to(storage).to(x.dtype)


def _plan(items, layer_idx, dec, starts, lengths, window):
    """Host bookkeeping for every session of one layer; returns plans and new-key expiries [N, H_kv]."""
    dec_cpu = dec.cpu()
    plans: list[LayerPlan] = []
    new_expiry = torch.full(
        dec_cpu.shape, KEEP_FOREVER, dtype=torch.int32
    )  # a decode token's flag is owed
    offset = 0
    for it, start, n in zip(items, starts, lengths, strict=True):
        if n == 1:  # decode: the token's own flag is owed, its δ settles the previous token
            plans.append(it.cache.plan_decode(layer_idx, start, dec_cpu[offset].tolist()))
            offset += 1
            continue
        chunk = dec_cpu[offset : offset + n]  # [n, H_kv] δ of the new tokens
        flags = key_flags(chunk[None])[0]  # e_j = δ_{j+1}; the last one is owed
        plans.append(it.cache.plan_layer(layer_idx, start, flags, chunk[0]))
        pos = torch.arange(start, start + n, dtype=torch.int32)[:, None]
        new_expiry[offset : offset + n] = torch.where(
            flags, pos + window, new_expiry[offset : offset + n]
        )
        offset += n
    return plans, new_expiry.to(dec.device)


def _tables(items, layer_idx, lens_override):
    """Stack per-session block tables [S, H_kv, max_blocks] and lengths [S, H_kv] for a layer."""
    streams = [it.cache.blocks[layer_idx] for it in items]
    width = max(1, max(len(b) for row in streams for b in row))
    device = items[0].cache.pool.kv.device
    rows = [[b + [0] * (width - len(b)) for b in row] for row in streams]
    tables = torch.tensor(rows, dtype=torch.int32)
    lens = (
        lens_override if lens_override is not None else [it.cache.lens[layer_idx] for it in items]
    )
    return tables.to(device), torch.tensor(lens, dtype=torch.int32).to(device)


def _apply_flags(pool, plans: list[LayerPlan]) -> None:
    slots = [s for p in plans for s in p.flag_slots]
    if not slots:
        return
    values = [v for p in plans for v in p.flag_values]
    idx = torch.tensor(slots, dtype=torch.int64, device=pool.kv.device)
    pool.expiry_flat[idx] = torch.tensor(values, dtype=torch.int32, device=pool.kv.device)


def _apply_writes(pool, plans: list[LayerPlan], k, v, cu) -> None:
    """Scatter survivors (k/v [N, H_kv, d]) into their slots, then compact (moves)."""
    device = pool.kv.device
    rows, heads, slots, expiry, pos = [], [], [], [], []
    for p, base in zip(plans, cu[:-1].tolist(), strict=True):
        rows.append(np.asarray(p.write_tokens, dtype=np.int64) + base)  # chunk → packed row
        heads.extend(p.write_heads)
        slots.extend(p.write_slots)
        expiry.extend(p.write_expiry)
        pos.extend(p.write_pos)
    if slots:
        r = torch.from_numpy(np.concatenate(rows)).to(device)
        hd = torch.tensor(heads, device=device)
        idx = torch.tensor(slots, dtype=torch.int64, device=device)
        write_kv_slots(
            pool.kv,
            pool.slot_expiry,
            idx,
            k[r, hd].to(pool.kv.dtype),
            v[r, hd].to(pool.kv.dtype),
            torch.tensor(expiry, dtype=torch.int32, device=device),
        )
        pool.pos_flat[idx] = torch.tensor(pos, dtype=torch.int32, device=device)
    src = [s for p in plans for s in p.move_src]
    if src:
        s_idx = torch.tensor(src, dtype=torch.int64, device=device)
        d_idx = torch.tensor(
            [d for p in plans for d in p.move_dst], dtype=torch.int64, device=device
        )
        copy_kv_slots(pool.kv, pool.slot_expiry, s_idx, d_idx)
        pool.pos_flat[d_idx] = pool.pos_flat[s_idx]
