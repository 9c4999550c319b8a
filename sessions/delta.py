"""Incremental checkpoints: the difference between two cache states of one session, and back.

A session's token stream only grows, and the K/V a stream holds for the token at position p
never changes once written (compaction moves it to another slot, with its position). So a
slot whose position equals the base state's position at the same (layer, head, slot) holds
the same K/V, and a delta needs only:

- per layer l: `layer.{l}.lens` [H_kv] (the new slot counts), `layer.{l}.rows` [m] int64
  (packed row indices, head-major as in `agentrt.dms.cache_state`, whose slot is new or now
  holds another position) with their `.k`/`.v` [m, head_dim], `.pos`/`.expiry` [m], and
  `layer.{l}.flag_rows` / `.flag_expiry` (rows that only changed their expiry: a DMS flag
  settled since the base);
- `ring_slot`, `ring_flag`, `next_pos` whole (small), and `token_ids` appended since the base;
- the extra tensors (sampler state) that changed since the base; the header names them all
  (`extra_names`), and the others are inherited from the parent on restore.

This holds only while the base's tokens are a prefix of the session's tokens (same lineage);
`DeltaBase.delta` returns None otherwise and the caller writes a full checkpoint.
`apply_delta(base_state, delta)` rebuilds exactly the state the delta was taken from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agentrt.errors import CheckpointError

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

DELTA_TOKENS = "token_ids"
_GLOBALS = ("ring_slot", "ring_flag", "next_pos")


@dataclass(frozen=True)
class DeltaBase:
    """What the next delta of a session is taken against: one checkpoint's positions and expiries.

    Holds 8 bytes per live slot (positions and expiries, never K/V) plus the token ids.
    `full_bytes` is the size of the chain's full checkpoint, `chain_bytes`/`deltas` what the
    deltas written on top of it since cost.
    """

    checkpoint_id: str
    sha256: str
    token_ids: list[int] = field(repr=False)
    lens: list[list[int]] = field(repr=False)
    pos: list[torch.Tensor] = field(repr=False)
    expiry: list[torch.Tensor] = field(repr=False)
    head_dim: int
    dtype: torch.dtype
    window: int
    full_bytes: int
    chain_bytes: int = 0
    deltas: int = 0
    extra: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @classmethod
    def of(
        cls,
        checkpoint_id: str,
        sha256: str,
        state: dict[str, torch.Tensor],
        token_ids: list[int],
        *,
        full_bytes: int,
        chain_bytes: int = 0,
        deltas: int = 0,
        extra: dict[str, torch.Tensor] | None = None,
        kv_shape: tuple[int, torch.dtype] | None = None,
    ) -> DeltaBase:
        """The base a checkpoint of `state` (a `SessionCache.state_dict()`) and its extra
        tensors (sampler state) give the next save.

        `state` may lack K/V (`agentrt.dms.cache_rows.pack_positions`); then `kv_shape` is
        (head_dim, dtype) of the K/V it stands for.
        """
        layers, head_dim, dtype, lens = _layout(state, kv_shape)
        return cls(
            checkpoint_id=checkpoint_id,
            sha256=sha256,
            token_ids=list(token_ids),
            lens=lens,
            pos=[state[f"layer.{i}.pos"] for i in range(layers)],
            expiry=[state[f"layer.{i}.expiry"] for i in range(layers)],
            head_dim=head_dim,
            dtype=dtype,
            window=int(state["ring_slot"].shape[2]) - 1,
            full_bytes=full_bytes,
            chain_bytes=chain_bytes,
            deltas=deltas,
            extra=dict(extra or {}),
        )

    def changed_extra(self, extra: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The extra tensors that differ from the base's (the rest are inherited on restore)."""
        import torch

        same = self.extra
        return {
            k: v
            for k, v in extra.items()
            if k not in same
            or same[k].dtype != v.dtype
            or same[k].shape != v.shape
            or not torch.equal(same[k], v)
        }

    def delta(
        self,
        state: dict[str, torch.Tensor],
        token_ids: list[int],
        *,
        kv: Callable[[int, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
        kv_shape: tuple[int, torch.dtype] | None = None,
    ) -> dict[str, torch.Tensor] | None:
        """The delta tensors from this base to `state`, or None when no delta can express it.

        Without K/V in `state`, `kv(layer, rows)` returns the K and V of those packed rows
        and `kv_shape` is their (head_dim, dtype): only the rows the delta holds are read.
        """
        import torch

        layers, head_dim, dtype, lens = _layout(state, kv_shape)
        heads = len(lens[0])
        n = len(self.token_ids)
        if (
            layers != len(self.lens)
            or heads != len(self.lens[0])
            or head_dim != self.head_dim
            or dtype != self.dtype
            or int(state["ring_slot"].shape[2]) - 1 != self.window
            or len(token_ids) < n
            or token_ids[:n] != self.token_ids
        ):
            return None
        out: dict[str, torch.Tensor] = {}
        for layer in range(layers):
            new_lens = lens[layer]
            base, valid = _base_rows(self.lens[layer], new_lens)
            pos, expiry = state[f"layer.{layer}.pos"], state[f"layer.{layer}.expiry"]
            if self.pos[layer].numel():
                safe = base.clamp(min=0)
                same = valid & (self.pos[layer][safe] == pos)
                changed = self.expiry[layer][safe] != expiry
            else:
                same = changed = torch.zeros_like(valid)
            rows = (~same).nonzero().flatten()
            flags = (same & changed).nonzero().flatten()
            out[f"layer.{layer}.lens"] = torch.tensor(new_lens, dtype=torch.int32)
            out[f"layer.{layer}.rows"] = rows
            if kv is None:
                k, v = state[f"layer.{layer}.k"][rows], state[f"layer.{layer}.v"][rows]
            else:
                k, v = kv(layer, rows)
            out[f"layer.{layer}.k"], out[f"layer.{layer}.v"] = k.contiguous(), v.contiguous()
            for name in ("pos", "expiry"):
                out[f"layer.{layer}.{name}"] = state[f"layer.{layer}.{name}"][rows].contiguous()
            out[f"layer.{layer}.flag_rows"] = flags
            out[f"layer.{layer}.flag_expiry"] = expiry[flags].contiguous()
        for name in _GLOBALS:
            out[name] = state[name].clone()
        out[DELTA_TOKENS] = torch.tensor(token_ids[n:], dtype=torch.int64)
        return out

    def advanced(
        self,
        checkpoint_id: str,
        sha256: str,
        state: dict[str, torch.Tensor],
        token_ids: list[int],
        *,
        delta_bytes: int,
        extra: dict[str, torch.Tensor],
    ) -> DeltaBase:
        """The base after a delta of `delta_bytes` to `state` was written as `checkpoint_id`."""
        return DeltaBase.of(
            checkpoint_id,
            sha256,
            state,
            token_ids,
            full_bytes=self.full_bytes,
            chain_bytes=self.chain_bytes + delta_bytes,
            deltas=self.deltas + 1,
            extra=extra,
            kv_shape=(self.head_dim, self.dtype),
        )


def apply_delta(
    base: dict[str, torch.Tensor], delta: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The cache state `delta` was taken from, given the state of its base checkpoint."""
    return apply_deltas(base, [delta])


def apply_deltas(
    base: dict[str, torch.Tensor], deltas: list[dict[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """The cache state after applying `deltas` in order on top of `base` (a full state).

    Each layer's output is one buffer with room per stream for the most slots the stream
    holds in the chain; the base is copied into it once and every delta's rows are
    scattered into place, so a chain costs one copy of the state plus its deltas' bytes
    (streams only grow in practice; one that shrank costs a final gather). Raises CheckpointError naming the delta (1-based) that does not fit.
    """
    import torch

    from agentrt.dms.cache_state import validate_state

    layers, heads, head_dim, base_lens = validate_state(base)
    for n, delta in enumerate(deltas, start=1):
        missing = [
            f"layer.{layer}.{f}"
            for layer in range(layers)
            for f in ("lens", "rows", "k", "v", "pos", "expiry", "flag_rows", "flag_expiry")
            if f"layer.{layer}.{f}" not in delta
        ] + [g for g in _GLOBALS if g not in delta]
        if missing:
            raise CheckpointError(f"delta {n} lacks tensors {missing[:4]}")
    out: dict[str, torch.Tensor] = {}
    for layer in range(layers):
        lens = list(base_lens[layer])
        seq = [[int(x) for x in d[f"layer.{layer}.lens"].tolist()] for d in deltas]
        for n, row in enumerate(seq, start=1):
            if len(row) != heads or min(row, default=0) < 0:
                raise CheckpointError(f"delta {n} of layer {layer} has slot counts {row}")
        final = seq[-1] if seq else lens
        # each stream gets room for the most slots it holds anywhere in the chain; streams
        # only grow in practice, so the buffer is the output and the base is copied once
        cap = [max([lens[h]] + [r[h] for r in seq]) for h in range(heads)]
        cap_t = torch.tensor(cap, dtype=torch.int64)
        start = torch.cumsum(cap_t, 0) - cap_t
        bufs = {}
        for name in ("k", "v", "pos", "expiry"):
            src = base[f"layer.{layer}.{name}"]
            buf = src.new_empty((sum(cap), *src.shape[1:]))
            for h, part in enumerate(src.split(lens)):  # contiguous copies, one per stream
                buf[int(start[h]) : int(start[h]) + lens[h]] = part
            bufs[name] = buf
        for n, (delta, new_lens) in enumerate(zip(deltas, seq, strict=True), start=1):
            rows = delta[f"layer.{layer}.rows"].to(torch.int64)
            flag_rows = delta[f"layer.{layer}.flag_rows"].to(torch.int64)
            total = sum(new_lens)
            for r in (rows, flag_rows):
                if r.numel() and (int(r.min()) < 0 or int(r.max()) >= total):
                    raise CheckpointError(f"delta {n} of layer {layer} writes past its slots")
            if rows.numel() > 1 and not bool((rows[1:] > rows[:-1]).all()):
                raise CheckpointError(f"delta {n} of layer {layer} has unordered rows")
            h_rows, s_rows = _unpack(rows, new_lens)
            old = torch.tensor(lens, dtype=torch.int64)
            grown = sum(max(0, b - a) for a, b in zip(lens, new_lens, strict=True))
            if int((s_rows >= old[h_rows]).sum()) != grown:
                raise CheckpointError(f"delta {n} of layer {layer} leaves new slots without K/V")
            at = start[h_rows] + s_rows
            for name in ("k", "v", "pos", "expiry"):
                value = delta[f"layer.{layer}.{name}"]
                if value.shape[0] != rows.numel():
                    raise CheckpointError(f"delta {n} of layer {layer} has a bad {name!r}")
                bufs[name][at] = value.to(bufs[name].dtype)
            h_flag, s_flag = _unpack(flag_rows, new_lens)
            value = delta[f"layer.{layer}.flag_expiry"].to(torch.int32)
            bufs["expiry"][start[h_flag] + s_flag] = value
            lens = new_lens
        keep = None
        if final != cap:  # a stream shrank somewhere: gather the live slots once
            keep = torch.cat(
                [torch.arange(int(start[h]), int(start[h]) + final[h]) for h in range(heads)]
            )
        for name in ("k", "v", "pos", "expiry"):
            buf = bufs[name]
            out[f"layer.{layer}.{name}"] = buf if keep is None else buf[keep]
        out[f"layer.{layer}.lens"] = torch.tensor(final, dtype=torch.int32)
    last = deltas[-1] if deltas else base
    for name in _GLOBALS:
        out[name] = last[name].clone()
    validate_state(out)
    return out


def _layout(
    state: dict[str, torch.Tensor], kv_shape: tuple[int, torch.dtype] | None
) -> tuple[int, int, torch.dtype, list[list[int]]]:
    """(layers, head_dim, K/V dtype, lens per stream) of a state with or without K/V."""
    from agentrt.dms.cache_state import validate_state

    if "layer.0.k" in state:
        layers, _, head_dim, lens = validate_state(state)
        return layers, head_dim, state["layer.0.k"].dtype, lens
    if kv_shape is None:
        raise CheckpointError("a cache state without K/V needs their head_dim and dtype")
    layers = int(state["ring_slot"].shape[0])
    lens = [[int(n) for n in state[f"layer.{i}.lens"].tolist()] for i in range(layers)]
    for i in range(layers):
        total = sum(lens[i])
        if state[f"layer.{i}.pos"].shape != (total,) or state[f"layer.{i}.expiry"].shape != (
            total,
        ):
            raise CheckpointError(f"cache state of layer {i} is inconsistent: lens {lens[i]}")
    return layers, kv_shape[0], kv_shape[1], lens


def _unpack(rows: torch.Tensor, lens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(head, slot) of packed row indices `rows` of a state with these slot counts."""
    import torch

    n = torch.tensor(lens, dtype=torch.int64)
    ends = torch.cumsum(n, 0)
    heads = torch.searchsorted(ends, rows, right=True)
    return heads, rows - (ends - n)[heads]


def _base_rows(base_lens: list[int], new_lens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """For each packed row of the new state: the base's packed row of the same (head, slot)
    (−1 where the base had no such slot), and whether there is one."""
    import torch

    new = torch.tensor(new_lens, dtype=torch.int64)
    old = torch.tensor(base_lens, dtype=torch.int64)
    heads = torch.repeat_interleave(torch.arange(len(new_lens)), new)
    new_start = torch.cumsum(new, 0) - new
    old_start = torch.cumsum(old, 0) - old
    slot = torch.arange(int(new.sum())) - new_start[heads]
    valid = slot < old[heads]
    base = torch.where(valid, old_start[heads] + slot, torch.full_like(slot, -1))
    return base, valid


__all__ = ["DELTA_TOKENS", "DeltaBase", "apply_delta", "apply_deltas"]
