"""Per-session DMS cache state: block tables, slot counts, the window ring, the next position.

Invariants after every step, for each stream (layer l, KV head h) of a session that has
seen n tokens (positions 0..n−1), with W = w + 1:
- slots 0..lens[l][h]−1 are live and dense; they hold exactly the tokens that were
  visible to the last query (position n−1): the newest min(n, W) tokens, plus every
  older token whose flag is 0 ("kept"). So slots = kept + min(n, W).
- `ring_slot[l, h, p % W]` is the slot of token p for p in [n − W, n) (−1 before).
- `ring_flag[l, h, p % W]` is e_p = δ_{p+1}: known for p < n − 1; the last token's flag is
  owed until the next token's decision arrives.
- The pool's `slot_expiry` of a live slot is p + w for a flagged token, KEEP_FOREVER otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from agentrt.dms.cache_spec import compression_ratio
from agentrt.dms.kv_pool import KEEP_FOREVER, KVPool


@dataclass
class LayerPlan:
    """Device work for one (session, layer) step, in flat pool slot indices."""

    flag_slots: list[int] = field(default_factory=list)  # slots whose expiry becomes flag_values
    flag_values: list[int] = field(default_factory=list)
    write_slots: list[int] = field(default_factory=list)  # new survivor → slot
    write_tokens: list[int] = field(default_factory=list)  # token index within the chunk
    write_heads: list[int] = field(default_factory=list)  # KV head of the write
    write_expiry: list[int] = field(default_factory=list)
    write_pos: list[int] = field(default_factory=list)
    move_src: list[int] = field(default_factory=list)  # compaction: slot → hole
    move_dst: list[int] = field(default_factory=list)
    shrink: list[tuple[int, int]] = field(
        default_factory=list
    )  # (head, blocks kept) after attention


@dataclass
class DecodeSlots:
    """Where one decode token goes in every stream of a session, for all layers at once.

    Stream-relative slots; flat pool indices come from `table`. The previous token's slot
    (whose flag this token's decision settles) is −1 where it holds nothing (position 0, or
    a baseline dropped it).
    """

    table: np.ndarray  # [L, H_kv, max_blocks] int64 block ids (padded with 0)
    slot: np.ndarray  # [L, H_kv] int64 slot the new token is written to
    prev: np.ndarray  # [L, H_kv] int64 slot of token start − 1, or −1
    lens: np.ndarray  # [L, H_kv] int64 slots held after the write (what decode attends)


class SessionCache:
    """One session's paged DMS cache: which pool blocks and slots each stream holds."""

    def __init__(self, pool: KVPool, num_layers: int, num_kv_heads: int, window: int) -> None:
        self.pool = pool
        self.num_layers = num_layers
        self.num_kv_heads = num_kv_heads
        self.window = window
        self.ring_len = window + 1
        self.blocks: list[list[list[int]]] = [
            [[] for _ in range(num_kv_heads)] for _ in range(num_layers)
        ]
        self.lens: list[list[int]] = [[0] * num_kv_heads for _ in range(num_layers)]
        self.ring_slot = torch.full(
            (num_layers, num_kv_heads, self.ring_len), -1, dtype=torch.int64
        )
        self.ring_flag = torch.zeros((num_layers, num_kv_heads, self.ring_len), dtype=torch.bool)
        self.next_pos = 0
        self.closed = False
        self.forked = False  # blocks may be shared (copy-on-write) once a fork happened

    # -- facts -------------------------------------------------------------------------
    @property
    def slots_held(self) -> int:
        """Live slots over all streams."""
        return sum(sum(row) for row in self.lens)

    @property
    def blocks_held(self) -> int:
        """Pool blocks referenced by this session (shared blocks count for each owner)."""
        return sum(len(b) for row in self.blocks for b in row)

    @property
    def blocks_exclusive(self) -> int:
        """Pool blocks that freeing this cache would return (not shared with a fork)."""
        if not self.forked:
            return self.blocks_held
        return sum(
            1 for row in self.blocks for b in row for blk in b if self.pool.refcount(blk) == 1
        )

    def flat_slot(self, layer: int, head: int, slot: int) -> int:
        """Flat pool index of stream slot `slot`."""
        bs = self.pool.block_size
        return self.blocks[layer][head][slot // bs] * bs + slot % bs

    def block_table(self, layer: int, width: int | None = None) -> torch.Tensor:
        """[H_kv, width] int32 block ids of this layer's streams (padded with 0)."""
        width = width or max(1, max(len(b) for b in self.blocks[layer]))
        table = torch.zeros(self.num_kv_heads, width, dtype=torch.int32)
        for h, blocks in enumerate(self.blocks[layer]):
            if blocks:
                table[h, : len(blocks)] = torch.tensor(blocks, dtype=torch.int32)
        return table

    def lens_tensor(self, layer: int) -> torch.Tensor:
        """[H_kv] int32 slots held per stream of one layer."""
        return torch.tensor(self.lens[layer], dtype=torch.int32)

    def blocks_needed(self, num_new: int) -> int:
        """Upper bound of new pool blocks one step of num_new tokens may take (appends + CoW)."""
        spec = self.pool.spec
        need = 0
        for layer in range(self.num_layers):
            for h in range(self.num_kv_heads):
                n, blocks = self.lens[layer][h], self.blocks[layer][h]
                grow = max(0, spec.blocks_for_slots(n + num_new) - len(blocks))
                shared = sum(1 for b in blocks if self.pool.is_shared(b)) if self.forked else 0
                need += grow + shared
        return need

    def stats(self) -> dict:
        """Tokens seen, slots/bytes held, compression ratio (tokens / slots, window included)."""
        spec = self.pool.spec
        streams = self.num_layers * self.num_kv_heads
        slots = self.slots_held
        per_stream = torch.tensor(self.lens, dtype=torch.float64)  # [L, H_kv]
        tokens = self.next_pos
        ratio = compression_ratio(tokens, self.lens)
        return {
            "tokens": tokens,
            "slots": slots,
            "blocks": self.blocks_held,
            "kv_bytes": self.blocks_held * spec.bytes_per_block,
            "slot_bytes": slots * spec.bytes_per_slot,
            "dense_bytes": tokens * streams * spec.bytes_per_slot,
            "compression_ratio": ratio,
            "slots_per_layer_head": self.lens and [list(row) for row in self.lens],
            "compression_per_layer_head": (tokens / per_stream.clamp(min=1)).tolist(),
            "compression_per_layer": (
                tokens * self.num_kv_heads / per_stream.sum(1).clamp(min=1)
            ).tolist(),
        }

    # -- one step of one layer -----------------------------------------------------------
    def plan_layer(
        self, layer: int, start: int, flags: torch.Tensor, first: torch.Tensor
    ) -> LayerPlan:
        """Plan the writes of a chunk at positions start.. for one layer (host bookkeeping).

        flags [T, H_kv] bool: e for each new token (last row False: owed);
        first [H_kv] bool: δ of the chunk's first token, the flag of token start−1.
        """
        plan = LayerPlan()
        num_new = flags.shape[0]
        if num_new == 1:
            return self.plan_decode(layer, start, first.tolist())
        w, ring = self.window, self.ring_len
        last = start + num_new - 1  # the position of the last query of this step
        flags_np = flags.numpy()  # [T, H_kv]
        first_l = first.tolist()
        ring_slots = self.ring_slot[layer].numpy()  # [H, W] views: writes go to the cache
        ring_flags = self.ring_flag[layer].numpy()
        pos = np.arange(start, start + num_new)
        recent = np.arange(max(0, start - ring), start)  # cached tokens still in the ring
        for h in range(self.num_kv_heads):
            ring_slot, ring_flag = ring_slots[h], ring_flags[h]
            # 1. the owed decision: token start−1 is marked by this chunk's first decision
            if start > 0 and first_l[h]:
                r = (start - 1) % ring
                ring_flag[r] = True
                plan.flag_slots.append(self._writable(layer, h, int(ring_slot[r])))
                plan.flag_values.append(start - 1 + w)
            # 2. cached window tokens whose expiry passes before the last query leave
            r_old = recent % ring
            holes = np.sort(ring_slot[r_old][ring_flag[r_old] & (recent + w < last)])
            # 3. new tokens visible to the last query survive
            marked = flags_np[:, h]
            survivors = np.nonzero(~marked | (pos + w >= last))[0]
            n, kept = self.lens[layer][h], len(survivors)
            grow = max(0, kept - len(holes))
            targets = np.concatenate([holes[:kept], np.arange(n, n + grow, dtype=holes.dtype)])
            new_len = n + grow
            self._grow(layer, h, new_len)
            s_pos, s_marked = pos[survivors], marked[survivors]
            plan.write_slots.extend(self._writable_many(layer, h, targets))
            plan.write_tokens.extend(survivors.tolist())
            plan.write_heads.extend([h] * kept)
            plan.write_expiry.extend(np.where(s_marked, s_pos + w, KEEP_FOREVER).tolist())
            plan.write_pos.extend(s_pos.tolist())
            ringed = s_pos >= start + num_new - ring  # the newest W tokens enter the ring
            ring_slot[s_pos[ringed] % ring] = targets[ringed]
            ring_flag[s_pos[ringed] % ring] = s_marked[ringed]
            # 4. more holes than survivors: move tail slots down so slots stay dense
            rest = holes[kept:].tolist()
            if rest:
                new_len = self._compact(layer, h, n, rest, plan)
            self.lens[layer][h] = new_len
        return plan

    def plan_decode(self, layer: int, start: int, first: list[bool]) -> LayerPlan:
        """plan_layer for one new token (decode), without the general chunk bookkeeping.

        With one token the only window token that can leave is p = start − W (same ring
        index as the new token); if it is marked, the new token takes its slot.
        """
        plan = LayerPlan()
        w, ring = self.window, self.ring_len
        bs = self.pool.block_size
        slots = self.ring_slot[layer].numpy()  # [H, W] views: numpy access is cheap
        marks = self.ring_flag[layer].numpy()
        r_prev, r_new = (start - 1) % ring, start % ring
        heads = range(self.num_kv_heads)
        if start > 0:  # the owed decision of token start − 1 arrives with this token
            for h in heads:
                if first[h]:
                    marks[h, r_prev] = True
                    plan.flag_slots.append(self._writable(layer, h, int(slots[h, r_prev])))
                    plan.flag_values.append(start - 1 + w)
        leaving = marks[:, r_new].tolist() if start >= ring else [False] * self.num_kv_heads
        lens, streams = self.lens[layer], self.blocks[layer]
        chosen = []
        for h in heads:
            if leaving[h]:
                slot = int(slots[h, r_new])  # the marked token leaving the window frees its slot
            else:
                slot = lens[h]
                lens[h] = slot + 1
                if slot == len(streams[h]) * bs:
                    streams[h].extend(self.pool.allocate(1))
            chosen.append(slot)
            if self.forked:
                plan.write_slots.append(self._writable(layer, h, slot))
            else:  # nothing can be shared without a fork: skip the copy-on-write check
                plan.write_slots.append(streams[h][slot // bs] * bs + slot % bs)
        slots[:, r_new] = chosen
        marks[:, r_new] = False
        n = self.num_kv_heads
        plan.write_tokens.extend([0] * n)
        plan.write_heads.extend(heads)
        plan.write_expiry.extend([KEEP_FOREVER] * n)  # its own flag is owed
        plan.write_pos.extend([start] * n)
        return plan

    def plan_decode_all(self, start: int) -> DecodeSlots:
        """Host bookkeeping of one decode token at `start` for every layer at once.

        Needs no decision of this step: the token leaving the window (start − W) had its flag
        settled by an earlier step, so the slot choice is known before the forward. The flag
        of token start − 1 is owed to this step's decision: the caller writes it on the
        device with a mask, then hands the decisions back with `settle_decode`. Needs W ≥ 2
        (window ≥ 1), or a model that never marks.
        """
        L, H, W = self.num_layers, self.num_kv_heads, self.ring_len
        bs = self.pool.block_size
        ring_slot = self.ring_slot.numpy()  # [L, H, W] views: writes go to the cache
        ring_flag = self.ring_flag.numpy()
        r_prev, r_new = (start - 1) % W, start % W
        lens = np.asarray(self.lens, dtype=np.int64)  # [L, H]
        leaving = ring_flag[:, :, r_new].copy() if start >= W else np.zeros((L, H), dtype=bool)
        slot = np.where(leaving, ring_slot[:, :, r_new], lens)
        grow = ~leaving & (slot % bs == 0)  # appending at a block boundary: maybe a new block
        for layer, h in zip(*np.nonzero(grow), strict=True):
            blocks = self.blocks[layer][h]
            if int(slot[layer, h]) == len(blocks) * bs:
                blocks.extend(self.pool.allocate(1))
        new_lens = lens + ~leaving
        self.lens = new_lens.tolist()
        prev = ring_slot[:, :, r_prev].copy() if start > 0 else np.full((L, H), -1, np.int64)
        if self.forked:  # copy-on-write before any write (the owed flag may write prev)
            for layer in range(L):
                for h in range(H):
                    self._writable(layer, h, int(slot[layer, h]))
                    if prev[layer, h] >= 0:
                        self._writable(layer, h, int(prev[layer, h]))
        ring_slot[:, :, r_new] = slot
        ring_flag[:, :, r_new] = False  # the new token's own flag is owed
        width = max(1, max(len(b) for row in self.blocks for b in row))
        table = np.zeros((L, H, width), dtype=np.int64)
        for layer, row in enumerate(self.blocks):
            for h, blocks in enumerate(row):
                table[layer, h, : len(blocks)] = blocks
        return DecodeSlots(table=table, slot=slot, prev=prev, lens=new_lens)

    def settle_decode(self, start: int, prev: np.ndarray, decisions: np.ndarray) -> None:
        """Record the flag of token start − 1 (decisions [L, H_kv] bool of token `start`)."""
        r_prev = (start - 1) % self.ring_len
        self.ring_flag.numpy()[:, :, r_prev] |= decisions & (prev >= 0)

    def _compact(self, layer: int, head: int, n: int, holes: list[int], plan: LayerPlan) -> int:
        """Plan moves of live tail slots into `holes` (of n slots); returns the new length."""
        new_len = n - len(holes)
        hole_set = set(holes)
        ring_slot = self.ring_slot[layer, head]
        sources = [s for s in range(new_len, n) if s not in hole_set]
        dests = [s for s in sorted(holes) if s < new_len]
        for src, dst in zip(sources, dests, strict=True):
            plan.move_src.append(self.flat_slot(layer, head, src))
            plan.move_dst.append(self._writable(layer, head, dst))
            hit = (ring_slot == src).nonzero()
            if hit.numel():
                ring_slot[int(hit[0, 0])] = dst
        plan.shrink.append((head, self.pool.spec.blocks_for_slots(new_len)))
        return new_len

    def plan_evict(self, layer: int, head: int, slots: list[int]) -> LayerPlan:
        """Plan dropping arbitrary live slots of one stream (score-based baselines); apply the plan's
        moves, then `release_shrunk`. Dropped window tokens lose their ring entry (slot −1)."""
        plan = LayerPlan()
        n = self.lens[layer][head]
        bad = [s for s in slots if not 0 <= s < n]
        assert not bad, f"evicting slots {bad} outside 0..{n - 1}"
        ring_slot = self.ring_slot[layer, head]
        for s in slots:
            ring_slot[ring_slot == s] = -1
        if slots:
            self.lens[layer][head] = self._compact(layer, head, n, sorted(set(slots)), plan)
        return plan

    def _writable(self, layer: int, head: int, slot: int) -> int:
        """Flat index of a slot about to be written, copying its block first if it is shared."""
        bs = self.pool.block_size
        blocks = self.blocks[layer][head]
        b = blocks[slot // bs]
        if self.pool.is_shared(b):
            blocks[slot // bs] = self.pool.copy_on_write(b)
        return blocks[slot // bs] * bs + slot % bs

    def _writable_many(self, layer: int, head: int, slots: np.ndarray) -> list[int]:
        """`_writable` of each slot (in order); one vectorised lookup when nothing is shared."""
        if self.forked:  # blocks may be shared: copy-on-write slot by slot
            return [self._writable(layer, head, int(slot)) for slot in slots]
        bs = self.pool.block_size
        blocks = np.asarray(self.blocks[layer][head], dtype=np.int64)
        return (blocks[slots // bs] * bs + slots % bs).tolist()

    def _grow(self, layer: int, head: int, slots: int) -> None:
        blocks = self.blocks[layer][head]
        need = self.pool.spec.blocks_for_slots(slots) - len(blocks)
        if need > 0:
            blocks.extend(self.pool.allocate(need))

    def release_shrunk(self, layer: int, plan: LayerPlan) -> None:
        """After the layer's attention: return the blocks compaction emptied to the pool."""
        for head, keep in plan.shrink:
            blocks = self.blocks[layer][head]
            extra = blocks[keep:]
            del blocks[keep:]
            self.pool.free(extra)

    # -- packing (swap and checkpoint share this one format) -------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every stream's live slots and the ring as CPU tensors (`agentrt.dms.cache_state`)."""
        from agentrt.dms.cache_state import pack_state

        return pack_state(self)

    @classmethod
    def from_state(
        cls, state: dict[str, torch.Tensor], pool: KVPool, *, window: int, convert: bool = False
    ) -> SessionCache:
        """Rebuild a cache from `state_dict()` in `pool` (any block size or device; with
        `convert`, K/V of another storage dtype are converted to the pool's)."""
        from agentrt.dms.cache_state import unpack_state

        return unpack_state(state, pool, window=window, convert=convert)

    # -- lifetime ------------------------------------------------------------------------
    def fork(self) -> SessionCache:
        """A copy that shares every block copy-on-write."""
        child = SessionCache(self.pool, self.num_layers, self.num_kv_heads, self.window)
        for layer in range(self.num_layers):
            for h in range(self.num_kv_heads):
                blocks = list(self.blocks[layer][h])
                self.pool.incref(blocks)
                child.blocks[layer][h] = blocks
        child.lens = [list(row) for row in self.lens]
        child.ring_slot = self.ring_slot.clone()
        child.ring_flag = self.ring_flag.clone()
        child.next_pos = self.next_pos
        self.forked = child.forked = True
        return child

    def free(self) -> None:
        """Return every block to the pool (idempotent)."""
        if self.closed:
            return
        for row in self.blocks:
            for blocks in row:
                self.pool.free(blocks)
                blocks.clear()
        self.lens = [[0] * self.num_kv_heads for _ in range(self.num_layers)]
        self.closed = True
