"""Admission planning is pure: the plan names the swaps, nothing moves until the engine runs it."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from agentrt import Engine
from agentrt.dms.cache_spec import CacheSpec
from agentrt.engine.memory import MemoryPlanner
from agentrt.engine.registry import SessionRegistry
from agentrt.engine.request import Request
from agentrt.engine.scheduler import Reservation, Scheduler, SchedulerConfig
from tests.dms.serving_helpers import tiny_model

SPEC = CacheSpec(
    num_layers=2, num_kv_heads=2, head_dim=8, block_size=4, dtype=torch.float32, window=3
)


def _session(name: str, *, held: int = 0, need: int = 0, last_used: float = 0.0, **kw):
    cache = SimpleNamespace(blocks_exclusive=held, blocks_needed=lambda n: need)
    fields = dict(cache=cache, swapped=None, pinned=False, active=None)
    fields.update(kw)
    return SimpleNamespace(id=name, name=name, last_used=last_used, **fields)


def _planner(free: int, *sessions):
    registry = SessionRegistry()
    for s in sessions:
        registry.add(s)
    pool = SimpleNamespace(num_free=free, spec=SPEC)
    return MemoryPlanner(pool, registry, swap=None)


def test_reserve_names_lru_victims_and_changes_nothing():
    """Room comes from the least recently used idle sessions; they stay resident until run."""
    old, new = _session("old", held=5, last_used=1.0), _session("new", held=5, last_used=2.0)
    busy = _session("busy", held=50, last_used=0.0, active=object())
    pinned = _session("pinned", held=50, last_used=0.0, pinned=True)
    me = _session("me", need=7)
    planner = _planner(3, old, new, busy, pinned, me)
    room = planner.reserve(Request(me, [1, 2], generate=False), 2)
    assert room == Reservation(blocks=7, swap_out=(old,), swap_in=())
    assert old.cache is not None and new.cache is not None  # nothing was swapped
    assert planner.free == 3 + 5 - 7


def test_reserve_refuses_without_side_effects_and_never_picks_planned_sessions():
    """A request that cannot fit gets None and chooses nothing; planned sessions are no victims."""
    big, idle = _session("big", held=3, need=10), _session("idle", held=2, last_used=1.0)
    small = _session("small", need=2)
    planner = _planner(1, big, idle, small)
    assert planner.reserve(Request(big, [1], generate=False), 1) is None
    assert planner.victims == [] and planner.free == 1 and idle.cache is not None
    room = planner.reserve(Request(small, [1], generate=False), 1)
    assert room is not None and room.swap_out == (idle,)  # never `big`: it is in the plan


def test_swapped_session_is_planned_back_in_with_room_for_its_tokens():
    """A swapped session's reservation covers its restore plus the growth of its new tokens."""
    record = SimpleNamespace(lens=[[4, 1], [0, 3]])  # blocks: 1 + 1 + 0 + 1 = 3
    away = _session("away", cache=None, swapped=record)
    idle = _session("idle", held=5, last_used=1.0)
    planner = _planner(0, away, idle)
    room = planner.reserve(Request(away, [9], generate=False), 1)
    # restore 3 blocks; one more token grows the streams at 4 slots (→ 5) and 0 (→ 1): 2 blocks
    assert room == Reservation(blocks=5, swap_out=(idle,), swap_in=(away,))


def test_scheduler_collects_the_swaps_of_its_items_into_the_plan():
    """The plan carries the swap-outs and swap-ins the engine runs before the forward."""
    victim, me = _session("victim", held=4, last_used=0.0), _session("me", need=3)
    planner = _planner(0, victim, me)
    sched = Scheduler(SchedulerConfig())
    sched.add(Request(me, [1, 2, 3], generate=False))
    plan = sched.schedule(planner.reserve)
    assert [it.request.session for it in plan.items] == [me]
    assert plan.swap_out == [victim] and plan.swap_in == []


def test_engine_runs_the_planned_swaps_before_the_forward():
    """A step that needs room swaps an idle session out; using it again swaps it back in."""
    eng = Engine(tiny_model(window=3), num_blocks=24, block_size=4)
    a = eng.new_session("a")
    a.prefill(list(range(10)))  # 4 streams: about 8 blocks
    b = eng.new_session("b")
    b.prefill(list(range(10, 34)))  # may need 4 * ceil(24 / 4) = 24 blocks: all of the pool
    assert a.cache is None and b.cache is not None
    assert eng.swap.counters()["swaps_out"] == 1
    assert eng.telemetry.last["swapped_out"] == 1
    a.prefill([5])
    assert a.cache is not None and len(a.tokens) == 11
    assert eng.swap.counters()["swaps_in"] == 1
