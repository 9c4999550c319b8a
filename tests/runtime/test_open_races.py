"""Opening a saved session reads its newest checkpoint under the session's lock."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentrt import Engine
from agentrt.errors import CheckpointError
from tests.dms.serving_helpers import tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny DMS model saved as an HF folder."""
    path = tmp_path_factory.mktemp("model")
    tiny_model(window=3, offset=5.0).save_pretrained(path)
    return path


def engine(model_dir: Path) -> Engine:
    """An engine on the test home (AGENTRT_HOME/AGENTRT_DB from the autouse fixture)."""
    return Engine.from_pretrained(model_dir, device="cpu", num_blocks=500, block_size=4)


def test_a_save_committed_while_opening_is_the_one_that_opens(model_dir: Path) -> None:
    first = engine(model_dir)
    s = first.new_session("race", seed=1)
    s.prefill(list(range(3, 20)))
    first.save(s)
    first.close()

    opener, other = engine(model_dir), engine(model_dir)
    real_lock = opener.persistence.lock

    def lock_after_another_save(session_id: str, name: str) -> None:
        # another process opens, extends and saves the session just before this one locks it
        opener.persistence.lock = real_lock  # type: ignore[method-assign]
        t = other.open_session("race")
        t.prefill([30, 31, 32])
        other.save(t)
        other.close_session(t)
        real_lock(session_id, name)

    opener.persistence.lock = lock_after_another_save  # type: ignore[method-assign]
    try:
        reopened = opener.open_session("race")
        assert reopened.tokens == [*range(3, 20), 30, 31, 32]
        reopened.prefill([40])
        opener.save(reopened)
    finally:
        opener.close()
        other.close()
    last = engine(model_dir)
    try:
        assert last.open_session("race").tokens == [*range(3, 20), 30, 31, 32, 40]
    finally:
        last.close()


def saved(model_dir: Path, name: str, saves: int) -> None:
    """A session saved `saves` times (one more token each time)."""
    eng = engine(model_dir)
    try:
        s = eng.new_session(name, seed=2)
        s.prefill(list(range(3, 12)))
        eng.save(s)
        for n in range(1, saves):
            s.prefill([20 + n])
            eng.save(s)
    finally:
        eng.close()


def test_a_lost_newest_checkpoint_is_loud_and_an_older_one_can_be_chosen(
    model_dir: Path, agentrt_home: Path
) -> None:
    saved(model_dir, "lost", 3)
    eng = engine(model_dir)
    store = eng.persistence.store
    newest = store.checkpoints("lost")[-1]
    (agentrt_home / newest.file).unlink()
    try:
        for _ in range(2):  # the second open must not fall back silently either
            with pytest.raises(CheckpointError, match="newest checkpoint") as err:
                eng.open_session("lost")
            assert "--checkpoint 2" in (err.value.hint or "")
        assert store.checkpoints("lost")[-1].missing
        assert store.get_session("lost").status == "saved"
        s = eng.open_session("lost", checkpoint=2)
        assert s.tokens == [*range(3, 12), 21]
        assert store.get_session("lost").status == "active"
    finally:
        eng.close()
    assert store.get_session("lost").status == "saved"


def test_a_corrupt_newest_checkpoint_is_refused_and_marked(
    model_dir: Path, agentrt_home: Path
) -> None:
    saved(model_dir, "bad", 2)
    eng = engine(model_dir)
    store = eng.persistence.store
    path = agentrt_home / store.checkpoints("bad")[-1].file
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    try:
        with pytest.raises(CheckpointError, match="corrupt"):
            eng.open_session("bad")
        assert [c.missing for c in store.checkpoints("bad")] == [False, True]
        with pytest.raises(CheckpointError, match="checkpoints 1 to 2, not 3"):
            eng.open_session("bad", checkpoint=3)
        assert eng.open_session("bad", checkpoint=1).tokens == list(range(3, 12))
    finally:
        eng.close()


def test_a_row_whose_header_digest_disagrees_is_refused(model_dir: Path, agentrt_home: Path):
    """A blob re-hashed into its row after damage still fails the header's content digest."""
    import hashlib

    from agentrt.sessions.models import CheckpointRow

    saved(model_dir, "rehashed", 1)
    eng = engine(model_dir)
    store = eng.persistence.store
    (c,) = store.checkpoints("rehashed")
    path = agentrt_home / c.file
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with store._sessionmaker.begin() as s:
        row = s.get(CheckpointRow, c.id)
        row.sha256 = hashlib.sha256(bytes(data)).hexdigest()
    try:
        with pytest.raises(CheckpointError, match="does not match its header"):
            eng.open_session("rehashed")
    finally:
        eng.close()


def test_a_session_is_saved_not_active_after_save_and_close(model_dir: Path) -> None:
    eng = engine(model_dir)
    s = eng.new_session("st", seed=1)
    s.prefill([3, 4, 5])
    eng.save(s)
    store = eng.persistence.store
    assert store.get_session("st").status == "active"
    eng.close()
    assert store.get_session("st").status == "saved"


def test_a_first_save_that_fails_leaves_no_row_and_a_row_without_checkpoint_is_repaired(
    model_dir: Path, agentrt_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agentrt.sessions import checkpoint as checkpoint_module

    eng = engine(model_dir)
    store = eng.persistence.store
    try:
        s = eng.new_session("first", seed=1)
        s.prefill([3, 4, 5])

        def killed(*args, **kwargs):
            raise KeyboardInterrupt  # the process dies while writing the first blob

        with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
            patch.setattr(checkpoint_module, "save_checkpoint", killed)
            eng.save(s)
        assert store.name_taken("first") is None and s.db_id is None
        # a row without checkpoint, as older versions left after a crash
        stale = store.create_session("first", "m", "f" * 64, {})
        other = engine(model_dir)
        with pytest.raises(CheckpointError, match="no checkpoint") as err:
            other.open_session("first")
        other.close()
        assert "sessions rm first" in (err.value.hint or "")
        eng.save(s)  # takes the name over instead of "already exists"
        assert store.get_session("first").id != stale.id
        assert len(store.checkpoints("first")) == 1
    finally:
        eng.close()
    assert engine(model_dir).open_session("first").tokens == [3, 4, 5]
