"""KVPool: allocation, refcounts, copy-on-write, flat views and budgeting.

The core is a model-based check: a `PoolModel` mirrors who owns which block and what data
each block holds, drives the pool through allocate / free / incref (fork) /
copy_on_write, and checks the pool against the mirror after every op. Hypothesis drives
it as a state machine; a seeded 1000-op run drives it in one long sequence.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from agentrt.dms.cache_spec import CacheSpec
from agentrt.dms.kv_pool import KEEP_FOREVER, UNUSED, KVPool
from agentrt.errors import BudgetError, ConfigError
from agentrt.kernels import write_kv_slots


def small_spec(
    block_size: int = 4, head_dim: int = 3, dtype: torch.dtype = torch.float32
) -> CacheSpec:
    """A tiny spec; fp32 so tags written into K/V round-trip exactly."""
    return CacheSpec(
        num_layers=2,
        num_kv_heads=2,
        head_dim=head_dim,
        block_size=block_size,
        dtype=dtype,
        window=3,
    )


def snapshot(pool: KVPool) -> tuple[object, ...]:
    """Everything observable about a pool: stats, every refcount, every tensor."""
    refs = [pool.refcount(b) for b in range(pool.num_blocks)]
    tensors = (pool.kv.clone(), pool.slot_expiry.clone(), pool.slot_pos.clone())
    return pool.stats(), refs, tensors


def assert_same(before: tuple[object, ...], after: tuple[object, ...]) -> None:
    """The two snapshots are identical (tensors compared bit-exactly: torch.empty may hold NaNs)."""
    assert before[0] == after[0]
    assert before[1] == after[1]
    for a, b in zip(before[2], after[2], strict=True):  # type: ignore[arg-type]
        assert torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


class PoolModel:
    """Mirror of a KVPool: owners -> blocks, block -> data tag; checks the pool after each op."""

    def __init__(self, pool: KVPool) -> None:
        self.pool = pool
        self.owners: dict[int, list[int]] = {}
        self.tag: dict[int, int] = {}  # block -> tag written into its K/V and metadata
        self.next_owner = 0
        self.next_tag = 1

    def _write_tag(self, block: int) -> None:
        tag = self.next_tag
        self.next_tag += 1
        self.pool.kv[block, 0] = float(tag)
        self.pool.kv[block, 1] = float(-tag)
        self.pool.slot_expiry[block] = tag
        self.pool.slot_pos[block] = tag + 1
        self.tag[block] = tag

    def _assert_tag(self, block: int) -> None:
        tag = self.tag[block]
        assert torch.all(self.pool.kv[block, 0] == tag) and torch.all(
            self.pool.kv[block, 1] == -tag
        )
        assert torch.all(self.pool.slot_expiry[block] == tag)
        assert torch.all(self.pool.slot_pos[block] == tag + 1)

    def allocate(self, n: int) -> None:
        pool = self.pool
        if not pool.can_allocate(n):
            before = snapshot(pool)
            with pytest.raises(
                BudgetError, match=rf"needs {n} blocks \({n * pool.bytes_per_block} bytes\)"
            ):
                pool.allocate(n)
            assert_same(before, snapshot(pool))
            return
        blocks = pool.allocate(n)
        assert len(blocks) == n == len(set(blocks))
        for b in blocks:
            assert pool.refcount(b) == 1
            assert torch.all(pool.slot_pos[b] == UNUSED) and torch.all(
                pool.slot_expiry[b] == UNUSED
            )
            self._write_tag(b)
        self.owners[self.next_owner] = blocks
        self.next_owner += 1

    def free_owner(self, owner: int) -> None:
        self.pool.free(self.owners.pop(owner))

    def free_some(self, owner: int, k: int) -> None:
        blocks = self.owners[owner]
        dropped, self.owners[owner] = blocks[:k], blocks[k:]
        self.pool.free(dropped)

    def fork(self, owner: int) -> None:
        blocks = list(self.owners[owner])
        self.pool.incref(blocks)
        self.owners[self.next_owner] = blocks
        self.next_owner += 1

    def cow(self, owner: int, index: int) -> None:
        pool = self.pool
        old = self.owners[owner][index]
        shared = pool.is_shared(old)
        refs_before = pool.refcount(old)
        if shared and not pool.can_allocate(1):
            before = snapshot(pool)
            with pytest.raises(BudgetError):
                pool.copy_on_write(old)
            assert_same(before, snapshot(pool))
            return
        new = pool.copy_on_write(old)
        self.owners[owner][index] = new
        if not shared:
            assert new == old and pool.refcount(old) == 1
            return
        assert new != old
        assert pool.refcount(new) == 1 and pool.refcount(old) == refs_before - 1
        # The copy is exact ...
        assert torch.equal(pool.kv[new], pool.kv[old])
        assert torch.equal(pool.slot_expiry[new], pool.slot_expiry[old])
        assert torch.equal(pool.slot_pos[new], pool.slot_pos[old])
        self.tag[new] = self.tag[old]
        # ... and writing the copy leaves the original untouched for the other owners.
        self._write_tag(new)
        self._assert_tag(old)

    def check(self) -> None:
        pool = self.pool
        held = Counter(b for blocks in self.owners.values() for b in blocks)
        assert pool.num_free + pool.num_used == pool.num_blocks
        assert pool.num_used == len(held)
        assert pool.bytes_used == pool.num_used * pool.bytes_per_block
        for b in range(pool.num_blocks):
            assert pool.refcount(b) == held[b] >= 0
            assert pool.is_shared(b) == (held[b] > 1)
        for b in held:
            self._assert_tag(b)
        stats = pool.stats()
        assert stats["num_shared"] == sum(1 for c in held.values() if c > 1)
        assert stats["num_free"] + stats["num_used"] == stats["num_blocks"]

    def close(self) -> None:
        """Free every owner: the whole pool must be free and every id handed out again once."""
        for owner in list(self.owners):
            self.free_owner(owner)
        pool = self.pool
        assert pool.num_free == pool.num_blocks and pool.num_used == 0
        assert sorted(pool.allocate(pool.num_blocks)) == list(range(pool.num_blocks))
        assert not pool.can_allocate(1)


class PoolMachine(RuleBasedStateMachine):
    """Hypothesis-driven random sequences of pool operations against PoolModel."""

    model: PoolModel

    @initialize(
        num_blocks=st.integers(1, 20), block_size=st.integers(1, 4), head_dim=st.integers(1, 3)
    )
    def make_pool(self, num_blocks: int, block_size: int, head_dim: int) -> None:
        self.model = PoolModel(KVPool(small_spec(block_size, head_dim), num_blocks))

    @rule(n=st.integers(0, 8))
    def allocate(self, n: int) -> None:
        self.model.allocate(n)

    @precondition(lambda self: self.model.owners)
    @rule(data=st.data())
    def free_owner(self, data: st.DataObject) -> None:
        self.model.free_owner(data.draw(st.sampled_from(sorted(self.model.owners))))

    @precondition(lambda self: self.model.owners)
    @rule(data=st.data())
    def free_some(self, data: st.DataObject) -> None:
        owner = data.draw(st.sampled_from(sorted(self.model.owners)))
        self.model.free_some(owner, data.draw(st.integers(0, len(self.model.owners[owner]))))

    @precondition(lambda self: self.model.owners)
    @rule(data=st.data())
    def fork(self, data: st.DataObject) -> None:
        self.model.fork(data.draw(st.sampled_from(sorted(self.model.owners))))

    @precondition(lambda self: any(self.model.owners.values()))
    @rule(data=st.data())
    def cow(self, data: st.DataObject) -> None:
        owner = data.draw(st.sampled_from([o for o, b in sorted(self.model.owners.items()) if b]))
        self.model.cow(owner, data.draw(st.integers(0, len(self.model.owners[owner]) - 1)))

    @invariant()
    def consistent(self) -> None:
        self.model.check()

    def teardown(self) -> None:
        if hasattr(self, "model"):
            self.model.close()


TestPoolMachine = PoolMachine.TestCase
TestPoolMachine.settings = settings(
    max_examples=30,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_thousand_random_ops_never_leak(seed: int) -> None:
    rng = random.Random(seed)
    model = PoolModel(KVPool(small_spec(block_size=2, head_dim=2), num_blocks=24))
    for _ in range(1000):
        owners = sorted(model.owners)
        op = rng.choice(["allocate", "allocate", "free", "free_some", "fork", "cow", "cow"])
        if op == "allocate" or not owners:
            model.allocate(rng.randint(0, 6))
        elif op == "free":
            model.free_owner(rng.choice(owners))
        elif op == "free_some":
            owner = rng.choice(owners)
            model.free_some(owner, rng.randint(0, len(model.owners[owner])))
        elif op == "fork":
            model.fork(rng.choice(owners))
        else:
            nonempty = [o for o in owners if model.owners[o]]
            if nonempty:
                owner = rng.choice(nonempty)
                model.cow(owner, rng.randrange(len(model.owners[owner])))
        model.check()
    model.close()


# -- deterministic unit tests -----------------------------------------------------------------


def test_tensor_shapes_dtypes_and_initial_metadata() -> None:
    pool = KVPool(small_spec(block_size=4, head_dim=3, dtype=torch.bfloat16), num_blocks=5)
    assert pool.kv.shape == (5, 2, 4, 3) and pool.kv.dtype == torch.bfloat16
    assert pool.slot_expiry.shape == pool.slot_pos.shape == (5, 4)
    assert pool.slot_expiry.dtype == pool.slot_pos.dtype == torch.int32
    assert torch.all(pool.slot_expiry == UNUSED) and torch.all(pool.slot_pos == UNUSED)
    assert pool.kv.is_contiguous()
    assert pool.expiry_flat.shape == pool.pos_flat.shape == (20,)
    assert KEEP_FOREVER == 2**31 - 1
    assert pool.bytes_total == 5 * pool.spec.bytes_per_block


def test_free_list_is_lifo_and_deterministic() -> None:
    pool = KVPool(small_spec(), num_blocks=6)
    assert pool.allocate(3) == [0, 1, 2]
    assert pool.allocate(1) == [3]
    pool.free([1, 2])
    assert pool.allocate(2) == [1, 2]  # freed blocks come back first, in the order freed
    pool.free([0])
    assert pool.allocate(3) == [0, 4, 5]
    assert pool.allocate(0) == [] and pool.num_free == 0


def test_allocate_failure_message_and_no_change() -> None:
    spec = small_spec()
    pool = KVPool(spec, num_blocks=4)
    pool.allocate(3)
    before = snapshot(pool)
    bpb = spec.bytes_per_block
    with pytest.raises(BudgetError) as info:
        pool.allocate(2)
    message = str(info.value)
    assert f"needs 2 blocks ({2 * bpb} bytes), only 1 free ({bpb} bytes) of 4" in message
    assert "kv_budget" in (info.value.hint or "") and "swap" in (info.value.hint or "")
    assert_same(before, snapshot(pool))
    # The failure did not perturb the free list: the next allocation is what it would have been.
    assert pool.allocate(1) == [3]


def test_reallocated_block_has_fresh_metadata() -> None:
    pool = KVPool(small_spec(), num_blocks=2)
    (b,) = pool.allocate(1)
    pool.slot_pos[b] = 7
    pool.slot_expiry[b] = KEEP_FOREVER
    pool.free([b])
    assert pool.allocate(1) == [b]
    assert torch.all(pool.slot_pos[b] == UNUSED) and torch.all(pool.slot_expiry[b] == UNUSED)


def test_double_free_and_bad_ids_are_internal_errors() -> None:
    pool = KVPool(small_spec(), num_blocks=3)
    blocks = pool.allocate(2)
    pool.free(blocks)
    with pytest.raises(AssertionError, match="double free: block 1 freed 1x, refcount 0"):
        pool.free([1])
    (b,) = pool.allocate(1)
    with pytest.raises(AssertionError, match=f"block {b} freed 2x, refcount 1"):
        pool.free([b, b])
    assert pool.refcount(b) == 1  # the rejected free changed nothing
    with pytest.raises(AssertionError, match="outside"):
        pool.free([3])
    with pytest.raises(AssertionError, match="incref of free block"):
        pool.incref([2])
    with pytest.raises(AssertionError, match="copy_on_write of free block"):
        pool.copy_on_write(2)


def test_fork_then_copy_on_write_isolates_writers() -> None:
    pool = KVPool(small_spec(block_size=2, head_dim=2), num_blocks=4)
    (b,) = pool.allocate(1)
    pool.kv[b] = torch.arange(8, dtype=torch.float32).view(2, 2, 2)
    pool.slot_expiry[b] = torch.tensor([5, KEEP_FOREVER], dtype=torch.int32)
    pool.slot_pos[b] = torch.tensor([0, 1], dtype=torch.int32)
    pool.incref([b])
    assert pool.is_shared(b) and pool.stats()["num_shared"] == 1
    c = pool.copy_on_write(b)
    assert c != b and pool.refcount(b) == 1 and pool.refcount(c) == 1
    assert torch.equal(pool.kv[c], pool.kv[b])
    assert pool.slot_expiry[c].tolist() == [5, KEEP_FOREVER] and pool.slot_pos[c].tolist() == [0, 1]
    pool.kv[c].zero_()
    assert torch.equal(pool.kv[b], torch.arange(8, dtype=torch.float32).view(2, 2, 2))
    assert pool.copy_on_write(b) == b  # now unshared: written in place
    pool.free([b, c])
    assert pool.num_free == 4


def test_copy_on_write_without_room_changes_nothing() -> None:
    pool = KVPool(small_spec(), num_blocks=1)
    (b,) = pool.allocate(1)
    pool.incref([b])
    before = snapshot(pool)
    with pytest.raises(BudgetError, match="needs 1 blocks"):
        pool.copy_on_write(b)
    assert_same(before, snapshot(pool))


def test_flat_slots_address_metadata_views_and_kernel_writes() -> None:
    pool = KVPool(small_spec(block_size=4, head_dim=16), num_blocks=3)
    assert pool.kv.is_contiguous()  # agentrt.kernels requires it
    blocks = torch.tensor([2, 0, 2], dtype=torch.int32)
    offsets = torch.tensor([1, 3, 0], dtype=torch.int32)
    flat = pool.flat_slot(blocks, offsets)
    assert flat.dtype == torch.int64 and flat.tolist() == [9, 3, 8]
    k = torch.randn(3, 16)
    v = torch.randn(3, 16)
    expiry = torch.tensor([5, KEEP_FOREVER, 7], dtype=torch.int32)
    write_kv_slots(pool.kv, pool.slot_expiry, flat, k, v, expiry)
    pool.pos_flat[flat] = torch.tensor([10, 11, 12], dtype=torch.int32)
    for i, (b, o) in enumerate(zip(blocks.tolist(), offsets.tolist(), strict=True)):
        assert torch.equal(pool.kv[b, 0, o], k[i]) and torch.equal(pool.kv[b, 1, o], v[i])
        assert pool.slot_pos[b, o] == 10 + i and pool.slot_expiry[b, o] == expiry[i]
        assert pool.expiry_flat[flat[i]] == expiry[i]
    # The flat metadata tensors are views: writes through the block tensors show up there.
    pool.slot_pos[1, 2] = 42
    assert pool.pos_flat[pool.block_size * 1 + 2] == 42
    assert pool.expiry_flat.data_ptr() == pool.slot_expiry.data_ptr()


def test_from_budget_sizes_pool_from_bytes() -> None:
    spec = small_spec()
    bpb = spec.bytes_per_block  # 2*4*3*4 + 4*8 = 128
    assert bpb == 128
    pool = KVPool.from_budget(spec, 10 * bpb + bpb - 1)
    assert pool.num_blocks == 10 and pool.bytes_total == 1280
    assert KVPool.from_budget(spec, "2KiB").num_blocks == 16


def test_from_budget_too_small_names_the_numbers() -> None:
    spec = small_spec()
    with pytest.raises(BudgetError) as info:
        KVPool.from_budget(spec, "100B")
    message = str(info.value)
    assert "'100B' (100 bytes)" in message
    assert "smaller than one block of 128 bytes" in message
    with pytest.raises(ConfigError):
        KVPool.from_budget(spec, "lots")


@pytest.mark.parametrize("num_blocks", [0, -1, 2.0])
def test_bad_num_blocks_is_config_error(num_blocks: object) -> None:
    with pytest.raises(ConfigError, match="num_blocks"):
        KVPool(small_spec(), num_blocks)  # type: ignore[arg-type]


def test_stats_are_json_ready() -> None:
    pool = KVPool(small_spec(), num_blocks=8)
    blocks = pool.allocate(3)
    pool.incref(blocks[:1])
    stats = pool.stats()
    assert stats["num_used"] == 3 and stats["num_free"] == 5 and stats["num_shared"] == 1
    assert stats["bytes_used"] == 3 * 128 and stats["bytes_free"] == 5 * 128
    assert stats["utilization"] == pytest.approx(3 / 8)
    assert stats["dtype"] == "float32" and stats["device"] == "cpu"
    assert "3/8 used" in repr(pool)
