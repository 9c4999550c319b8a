"""Scheduler plans, tested with fake sessions and a fake reserve: no model, no tensors."""

from __future__ import annotations

import pytest

from agentrt.engine.request import Request
from agentrt.engine.scheduler import Scheduler, SchedulerConfig
from agentrt.errors import ConfigError


def _req(name: str, n: int, *, decode: bool = False) -> Request:
    r = Request(session=name, pending=list(range(n)), generate=True)
    r.decode_phase = decode
    return r


def test_decode_tokens_go_first_and_prefill_is_chunked():
    """Decoders get their token every step; a long prompt is cut into chunks within the budgets."""
    sched = Scheduler(
        SchedulerConfig(max_tokens_per_step=64, prefill_chunk=16, max_prefill_tokens_per_step=24)
    )
    doc = _req("doc", 100)
    decs = [_req(f"d{i}", 1, decode=True) for i in range(3)]
    sched.add(doc)
    for d in decs:
        sched.add(d)
    plan = sched.schedule(lambda r, n: True)
    assert [it.request.session for it in plan.items] == ["d0", "d1", "d2", "doc"]
    assert [len(it.tokens) for it in plan.items] == [1, 1, 1, 16]
    assert plan.num_decode_tokens == 3 and plan.num_prefill_tokens == 16
    assert not plan.items[-1].completes_feed


def test_long_prefill_does_not_starve_decoders():
    """Across the steps a 1000-token prompt needs, every decoder runs in every step."""
    sched = Scheduler(
        SchedulerConfig(max_tokens_per_step=40, prefill_chunk=32, max_prefill_tokens_per_step=32)
    )
    doc = _req("doc", 1000)
    sched.add(doc)
    dec = _req("chat", 1, decode=True)
    sched.add(dec)
    steps = 0
    while doc.pending:
        plan = sched.schedule(lambda r, n: True)
        assert "chat" in [it.request.session for it in plan.items]
        sched.postprocess(plan)
        dec.pending = [0]  # the decoder samples a new token every step
        steps += 1
    assert steps == -(-1000 // 32)


def test_token_budget_and_session_cap():
    """The step never exceeds its token budget or session cap."""
    sched = Scheduler(
        SchedulerConfig(
            max_tokens_per_step=20,
            prefill_chunk=8,
            max_prefill_tokens_per_step=20,
            max_sessions_per_step=3,
        )
    )
    for i in range(5):
        sched.add(_req(f"p{i}", 10))
    plan = sched.schedule(lambda r, n: True)
    assert len(plan.items) == 3
    assert sum(len(it.tokens) for it in plan.items) <= 20


def test_requests_that_do_not_fit_are_deferred():
    """A refused reservation defers the request; the others still run."""
    sched = Scheduler()
    a, b = _req("a", 5), _req("b", 5)
    sched.add(a)
    sched.add(b)
    plan = sched.schedule(lambda r, n: r.session != "a")
    assert [it.request.session for it in plan.items] == ["b"]
    assert plan.deferred == [a]


def test_postprocess_consumes_fed_tokens_and_removed_requests_vanish():
    """Fed tokens leave the request; removed requests are never scheduled again."""
    sched = Scheduler(SchedulerConfig(prefill_chunk=4))
    r = _req("a", 6)
    sched.add(r)
    plan = sched.schedule(lambda r, n: True)
    sched.postprocess(plan)
    assert r.pending == [4, 5]
    sched.remove(r)
    assert not sched.schedule(lambda r, n: True).items


def test_bad_config_is_refused():
    """Zero or negative budgets raise ConfigError naming them."""
    with pytest.raises(ConfigError, match="prefill_chunk=0"):
        SchedulerConfig(prefill_chunk=0)


def test_request_repr_has_no_token_ids():
    """Logs never show token ids."""
    r = _req("a", 3)
    assert "[0, 1, 2]" not in repr(r)


def test_capped_decoders_take_turns_and_prefill_is_never_starved():
    """With room for two sessions, two perpetual decoders and a prompt all make progress."""
    sched = Scheduler(SchedulerConfig(max_sessions_per_step=2, prefill_chunk=2))
    d1, d2, doc = _req("d1", 1, decode=True), _req("d2", 1, decode=True), _req("doc", 8)
    for r in (d1, d2, doc):
        sched.add(r)
    served = {"d1": 0, "d2": 0, "doc": 0}
    for _ in range(4):
        plan = sched.schedule(lambda r, n: True)
        for it in plan.items:
            served[it.request.session] += 1
        sched.postprocess(plan)
        d1.pending, d2.pending = [0], [0]  # decoders always have a next token
    assert served["doc"] == 4 and not doc.pending
    assert served["d1"] == 2 and served["d2"] == 2
