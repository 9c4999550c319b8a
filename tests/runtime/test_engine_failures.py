"""Failure paths: one caller's error never strands another, and state stays consistent."""

from __future__ import annotations

import pytest
import torch

import agentrt.engine.engine as engine_mod
from agentrt import Engine, SamplingParams
from agentrt.dms import serving
from agentrt.engine.persistence import AutosavePolicy
from agentrt.errors import BudgetError, ConfigError, SessionError
from tests.dms.serving_helpers import tiny_model


def _prompt(n: int, seed: int) -> list[int]:
    return torch.randint(0, 97, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.fixture(scope="module")
def model():
    return tiny_model(window=3, offset=5.0)


def test_closing_a_session_with_an_open_stream_leaves_the_engine_healthy(model):
    """close() cancels the session's request; other sessions keep working."""
    eng = Engine(model, num_blocks=400, block_size=4)
    a = eng.new_session("a")
    a.prefill(_prompt(6, 1))
    a.generate(5)  # registered now, never iterated
    a.close()
    b = eng.new_session("b")
    b.prefill(_prompt(4, 2))
    assert len(list(b.generate(3))) == 3
    assert not eng.scheduler.waiting


def test_a_failing_request_does_not_strand_its_batchmates(model, monkeypatch):
    """An error while sampling for one session fails that request only."""
    eng = Engine(model, num_blocks=400, block_size=4)
    a, b = eng.new_session("a"), eng.new_session("b")
    a.prefill(_prompt(5, 3))
    real = engine_mod.sample_token

    def flaky(logits, params, generator, history):
        if params.temperature == 0.5:
            raise RuntimeError("sampler exploded")
        return real(logits, params, generator, history)

    list(a.generate(1))  # a now has a sampled, unfed token: its next sample happens in a step
    monkeypatch.setattr(engine_mod, "sample_token", flaky)
    stream = a.generate(3, temperature=0.5, seed=1)
    b.prefill(_prompt(5, 4))  # shares the step in which a's sampling fails
    assert len(b.tokens) == b.cache.next_pos == 5
    with pytest.raises(RuntimeError, match="exploded"):
        next(stream)
    assert len(list(b.generate(3))) == 3
    assert not eng.scheduler.waiting


def test_a_failed_forward_marks_the_planned_sessions_broken(model, monkeypatch):
    """A step that dies part-way frees the half-advanced caches and says how to recover."""
    eng = Engine(model, num_blocks=400, block_size=4)
    a, other = eng.new_session("a"), eng.new_session("other")
    a.prefill(_prompt(6, 5))
    other.prefill(_prompt(6, 6))
    used_before = eng.pool.num_used

    def boom(*args, **kwargs):
        raise torch.OutOfMemoryError("injected")

    monkeypatch.setattr(serving, "finish_layer", boom)
    with pytest.raises(torch.OutOfMemoryError):
        a.prefill(_prompt(3, 7))
    monkeypatch.undo()
    with pytest.raises(SessionError, match="lost its KV state"):
        a.prefill([1])
    assert eng.pool.num_used < used_before  # a's blocks went back
    assert len(list(other.generate(2))) == 2  # untouched sessions are fine


def test_a_prefill_that_fails_keeps_the_sampled_lead_token(model):
    """A token sampled by generate but not yet fed survives a prefill that fed nothing."""
    eng = Engine(model, num_blocks=24, block_size=4)
    s = eng.new_session()
    s.prefill(_prompt(5, 8))
    (tok,) = list(s.generate(1))
    with pytest.raises(BudgetError):
        s.prefill(_prompt(200, 9))
    assert s.pending_token == tok and len(s.tokens) == 5


def test_save_and_fork_of_a_session_that_cannot_come_back_raise_budget_error(model, tmp_path):
    """A swapped session that cannot fit is refused cleanly, creating nothing."""
    eng = Engine(
        model, num_blocks=12, block_size=4, home=tmp_path, db=f"sqlite:///{tmp_path / 'db'}"
    )
    a = eng.new_session("a")
    a.prefill(_prompt(6, 10))
    b = eng.new_session("b", pinned=True)
    b.prefill(_prompt(9, 11))  # swaps a out and holds the pool
    assert a.cache is None
    with pytest.raises(BudgetError, match="come back"):
        eng.save(a)
    with pytest.raises(BudgetError, match="come back"):
        a.fork("child")
    assert sorted(s.name for s in eng.sessions.values()) == ["a", "b"]


def test_close_survives_a_failing_autosave(model, tmp_path):
    """on_exit autosave errors are logged; every session is still freed and the engine closed."""
    db = f"sqlite:///{tmp_path / 'db'}"
    first = Engine(model, num_blocks=200, block_size=4, home=tmp_path, db=db)
    s = first.new_session("taken")
    s.prefill([1, 2])
    first.save(s)
    first.close()
    eng = Engine(
        model, num_blocks=200, block_size=4, home=tmp_path, db=db, autosave=AutosavePolicy()
    )
    dup = eng.new_session("taken")  # its save will fail: the name is in the catalog
    dup.prefill([3, 4])
    eng.close()
    assert eng.closed and eng.pool.num_free == eng.pool.num_blocks


def test_per_call_seed_makes_sampling_reproducible(model):
    """generate(seed=...) gives the same tokens whatever the session's own seed."""
    eng = Engine(model, num_blocks=400, block_size=4)
    outs = []
    for session_seed in (1, 2):
        s = eng.new_session(seed=session_seed)
        s.prefill(_prompt(6, 12))
        outs.append(list(s.generate(10, temperature=1.0, seed=123)))
    assert outs[0] == outs[1]


def test_tiny_temperature_is_greedy_not_nan(model):
    """Temperatures too small to divide by behave as greedy."""
    eng = Engine(model, num_blocks=400, block_size=4)
    a, b = eng.new_session(), eng.new_session()
    for s in (a, b):
        s.prefill(_prompt(5, 13))
    assert list(a.generate(4, temperature=1e-40)) == list(b.generate(4))
    with pytest.raises(ConfigError):
        SamplingParams(temperature=float("nan"))


def test_params_and_keywords_together_are_refused(model):
    """generate(params=..., temperature=...) is ambiguous and refused."""
    eng = Engine(model, num_blocks=100, block_size=4)
    s = eng.new_session()
    s.prefill([1, 2, 3])
    with pytest.raises(ConfigError, match="not both"):
        s.generate(params=SamplingParams(), temperature=0.5)


def test_open_session_does_not_confuse_an_unsaved_namesake(model, tmp_path):
    """Opening a saved name while an unsaved session of that name is open is refused clearly."""
    db = f"sqlite:///{tmp_path / 'db'}"
    eng = Engine(model, num_blocks=200, block_size=4, home=tmp_path, db=db)
    s = eng.new_session("x")
    s.prefill([1, 2, 3])
    eng.save(s)
    s.close()
    eng.new_session("x")
    with pytest.raises(SessionError, match="unsaved session named 'x'"):
        eng.open_session("x")


def test_a_swapped_session_that_cannot_grow_is_told_its_whole_need(model):
    """The error counts what planning counts (restore + growth), so it never claims a need
    that the free blocks would cover."""
    import re

    eng = Engine(model, num_blocks=16, block_size=4)
    a = eng.new_session("a")
    a.prefill(_prompt(8, 1))
    b = eng.new_session("b", pinned=True)
    b.prefill(_prompt(9, 2))  # swaps a out and holds part of the pool
    assert a.cache is None
    with pytest.raises(BudgetError) as err:
        a.prefill(_prompt(4, 3))  # its cache alone would fit the free blocks; with growth not
    found = re.search(r"needs (\d+) KV blocks .* only (\d+) free", str(err.value))
    assert found, str(err.value)
    need, free = int(found.group(1)), int(found.group(2))
    assert need > free, str(err.value)
    assert a.cache is None and len(a.tokens) == 8
