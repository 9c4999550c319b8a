"""Checkpoint writes stay off the step path: saves write outside the engine lock, autosaves
run in the caller's thread after its turn."""

from __future__ import annotations

import threading

from agentrt import Engine
from tests.dms.serving_helpers import tiny_model


def test_save_writes_outside_the_engine_lock(tmp_path, monkeypatch):
    """While one session's checkpoint is being written, another session keeps stepping."""
    import agentrt.sessions.checkpoint as ckpt

    eng = Engine(
        tiny_model(window=3),
        num_blocks=200,
        block_size=4,
        home=tmp_path,
        db=f"sqlite:///{tmp_path / 'db'}",
    )
    saving, other = eng.new_session("saving"), eng.new_session("other")
    saving.prefill([1, 2, 3])
    other.prefill([4, 5, 6])
    real = ckpt.save_checkpoint
    stepped = threading.Event()

    def slow_save(*args, **kwargs):
        worker = threading.Thread(target=lambda: (list(other.generate(3)), stepped.set()))
        worker.start()
        worker.join(timeout=60)
        return real(*args, **kwargs)

    monkeypatch.setattr(ckpt, "save_checkpoint", slow_save)
    row = eng.save(saving)
    assert stepped.is_set(), "another session could not step while a checkpoint was written"
    assert row.tokens == 3 and len(other.tokens) == 5


def test_autosave_runs_after_the_turn_not_inside_a_step(tmp_path, monkeypatch):
    """An autosave is written by the caller after its request ends, never inside `step()`."""
    from agentrt.engine.persistence import AutosavePolicy, Persistence

    eng = Engine(
        tiny_model(window=3),
        num_blocks=200,
        block_size=4,
        home=tmp_path,
        db=f"sqlite:///{tmp_path / 'db'}",
        autosave=AutosavePolicy(every_turns=1, on_exit=False),
    )
    in_step, writes = [False], []
    real_step, real_write = eng.step, Persistence.write

    def step():
        in_step[0] = True
        try:
            return real_step()
        finally:
            in_step[0] = False

    def write(self, snap, db_id):
        writes.append(in_step[0])
        return real_write(self, snap, db_id)

    monkeypatch.setattr(eng, "step", step)
    monkeypatch.setattr(Persistence, "write", write)
    s = eng.new_session("auto")
    s.prefill([1, 2, 3])
    list(s.generate(2))
    assert writes == [False, False]
