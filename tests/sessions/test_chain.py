"""Incremental checkpoints: chains restore exactly, broken links are named, retention keeps
what it must, forks and archives carry chains, and a save costs what the turn added."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from agentrt import Engine
from agentrt.cli.main import cli
from agentrt.errors import BudgetError, CheckpointError
from agentrt.sessions import (
    SessionStore,
    load_chain,
    load_checkpoint,
    open_catalog,
    save_checkpoint,
)
from agentrt.sessions.chain import BrokenChain, chain_of
from agentrt.sessions.gc import mark_missing, prune
from agentrt.sessions.retention import CheckpointPolicy, to_prune
from tests.dms.serving_helpers import tiny_model

LONG_CHAINS = CheckpointPolicy(keep=None, max_deltas=6, chain_ratio=10.0)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny DMS model that evicts often (so deltas free and reuse slots)."""
    path = tmp_path_factory.mktemp("model")
    tiny_model(window=3, offset=5.0).save_pretrained(path)
    return path


def engine(model_dir: Path, home: Path, **kw) -> Engine:
    return Engine.from_pretrained(
        model_dir,
        device="cpu",
        num_blocks=kw.pop("num_blocks", 2000),
        block_size=4,
        home=home,
        db=f"sqlite:///{home / 'agentrt.db'}",
        **kw,
    )


def moment(s) -> dict:
    """What a checkpoint taken now must restore: cache state, tokens, sampler state."""
    return {
        "state": s.cache.state_dict(),
        "tokens": list(s.tokens),
        "rng": s.generator.get_state(),
        "logits": None if s.last_logits is None else s.last_logits.clone(),
        "pending": s.pending_token,
    }


def assert_state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def assert_restores(loaded, want: dict) -> None:
    assert loaded.token_ids == want["tokens"]
    assert_state_equal(loaded.state, want["state"])
    assert torch.equal(loaded.extra["rng_state"], want["rng"])
    if want["logits"] is not None:
        assert torch.equal(loaded.extra["last_logits"].float(), want["logits"])
    pending = loaded.extra.get("pending_token")
    assert (None if pending is None else int(pending[0])) == want["pending"]


def grow(eng: Engine, s, turns: int, moments: dict, *, sample: bool = True) -> list:
    """`turns` turns of prompt + generated tokens, a save after each; returns the rows."""
    rows = []
    for t in range(turns):
        s.prefill([10 + t % 40, 11 + t % 30, 12 + t % 20])
        list(s.generate(4, **({"temperature": 0.9} if sample else {})))
        row = eng.save(s)
        moments[row.id] = moment(s)
        rows.append(row)
    return rows


def test_every_restore_point_of_a_chain_equals_a_full_checkpoint_of_that_moment(
    model_dir: Path, tmp_path: Path
) -> None:
    eng = engine(model_dir, tmp_path / "home", checkpoints=LONG_CHAINS)
    s = eng.new_session("chat", seed=5)
    s.prefill(list(range(3, 40)))
    moments: dict = {}
    rows = grow(eng, s, 14, moments)
    assert {r.kind for r in rows} == {"full", "incremental"}
    p = eng.persistence
    every = p.store.checkpoints(s.db_id)
    assert max(len(chain_of(every, r)) for r in every) == 7  # full + max_deltas
    for row in every:
        loaded = load_chain(p.layout, every, row, fingerprint=p.fingerprint)
        assert_restores(loaded, moments[row.id])
        # … and equal to reading a full checkpoint written at the same moment
        want = moments[row.id]
        full = save_checkpoint(
            tmp_path / f"full-{row.id}.safetensors",
            want["state"],
            token_ids=want["tokens"],
            fingerprint=p.fingerprint,
            extra=loaded.extra,
        )
        again = load_checkpoint(full.path, fingerprint=p.fingerprint)
        assert again.token_ids == loaded.token_ids
        assert_state_equal(again.state, loaded.state)
    eng.close_session(s)
    # a fresh engine reopens the newest (a delta) and an older restore point exactly
    eng2 = engine(model_dir, tmp_path / "home", checkpoints=LONG_CHAINS)
    reopened = eng2.open_session("chat")
    assert reopened.tokens == moments[every[-1].id]["tokens"]
    assert_state_equal(reopened.cache.state_dict(), moments[every[-1].id]["state"])
    eng2.close_session(reopened)
    older = eng2.open_session("chat", checkpoint=4)
    assert_state_equal(older.cache.state_dict(), moments[every[3].id]["state"])
    # a save after reopening an older restore point branches off it, as a delta on it
    older.prefill([50, 51])
    branch = eng2.save(older)
    assert branch.kind == "incremental" and branch.parent_id == every[3].id
    rows2 = eng2.persistence.store.checkpoints("chat")
    assert_state_equal(
        load_chain(eng2.persistence.layout, rows2, branch).state, older.cache.state_dict()
    )
    eng2.close()


def test_a_reopened_session_continues_exactly_like_one_that_never_stopped(
    model_dir: Path, tmp_path: Path
) -> None:
    eng = engine(model_dir, tmp_path / "home", checkpoints=LONG_CHAINS)
    s = eng.new_session("chat", seed=9)
    s.prefill(list(range(3, 30)))
    grow(eng, s, 4, {})
    assert eng.persistence.store.latest_checkpoint(s.db_id).kind == "incremental"
    twin = list(s.generate(12, temperature=0.9))
    eng.close()
    eng2 = engine(model_dir, tmp_path / "home")
    assert list(eng2.open_session("chat").generate(12, temperature=0.9)) == twin
    eng2.close()


def _flip(path: Path, at: float) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x01
    path.write_bytes(bytes(data))


def test_tampering_with_any_link_is_refused_naming_it(model_dir: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    eng = engine(model_dir, home, checkpoints=LONG_CHAINS)
    s = eng.new_session("chat", seed=5)
    s.prefill(list(range(3, 40)))
    rows = grow(eng, s, 4, {})
    eng.close()
    store = SessionStore(open_catalog(f"sqlite:///{home / 'agentrt.db'}"))
    layout = eng.persistence.layout
    every = store.checkpoints("chat")
    assert [c.kind for c in every] == ["full"] + ["incremental"] * 3
    for n, link in enumerate(every, start=1):
        path = layout.resolve(link.file)
        original = path.read_bytes()
        _flip(path, 0.9)  # in the tensor data
        with pytest.raises(BrokenChain, match=f"broken at link {n} of 4") as err:
            load_chain(layout, every, rows[-1])
        assert link.file in err.value.message and err.value.link == link
        # a catalog edited to match the tampered bytes is still refused (header digest)
        con = sqlite3.connect(home / "agentrt.db")
        from agentrt.sessions.atomic import file_sha256

        size, digest = file_sha256(path)
        con.execute("UPDATE checkpoints SET sha256=? WHERE id=?", (digest, link.id))
        con.commit()
        edited = store.checkpoints("chat")
        with pytest.raises(BrokenChain, match=f"link {n} of 4.*(tensor contents|written on top)"):
            load_chain(layout, edited, edited[-1])
        con.execute("UPDATE checkpoints SET sha256=? WHERE id=?", (link.sha256, link.id))
        con.commit()
        con.close()
        path.write_bytes(original)
    load_chain(layout, every, rows[-1])  # untouched again
    # a link spliced out of the chain: the delta names another parent than the one it gets
    con = sqlite3.connect(home / "agentrt.db")
    con.execute("UPDATE checkpoints SET parent_id=? WHERE id=?", (every[1].id, every[3].id))
    con.commit()
    con.close()
    with pytest.raises(BrokenChain, match="link 3 of 3.*written on top of another checkpoint"):
        load_chain(layout, store.checkpoints("chat"), store.checkpoints("chat")[-1])
    # the engine refuses a broken newest restore point loudly and names the usable ones
    _flip(layout.resolve(every[3].file), 0.5)
    eng2 = engine(model_dir, home)
    with pytest.raises(CheckpointError, match="older usable checkpoints: 1, 2, 3") as err:
        eng2.open_session("chat")
    assert every[3].file in err.value.message
    assert store.checkpoints("chat")[-1].missing  # marked, so later opens say so at once
    eng2.close()
    # gc --verify marks a damaged middle link and names the deltas it takes down with it
    con = sqlite3.connect(home / "agentrt.db")
    con.execute("UPDATE checkpoints SET parent_id=? WHERE id=?", (every[2].id, every[3].id))
    con.commit()
    con.close()
    _flip(layout.resolve(every[1].file), 0.5)
    said: list[tuple[str, str]] = []
    mark_missing(store, layout, verify=True, dry_run=False, say=lambda k, t, _: said.append((k, t)))
    assert (
        "marked",
        f"mark checkpoint {every[1].id[:8]} ({every[1].file}) missing: its file "
        "does not match the recorded sha256",
    ) in said
    assert any(
        k == "kept" and every[2].id[:8] in t and "cannot be restored" in t for k, t in said
    ), said
    store.close()


def test_retention_keeps_the_newest_restore_points_tagged_and_pinned(
    model_dir: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    policy = CheckpointPolicy(keep=3, max_deltas=3, chain_ratio=10.0)
    eng = engine(model_dir, home, checkpoints=policy)
    store = eng.persistence.store
    s = eng.new_session("chat", seed=5)
    s.prefill(list(range(3, 40)))
    moments: dict = {}
    rows = grow(eng, s, 3, moments)
    store.label_checkpoint(rows[1].id, "before-refactor")  # a delta: its chain must stay
    rows += grow(eng, s, 10, moments)
    kept = store.checkpoints("chat")
    ids = {c.id for c in kept}
    assert {r.id for r in rows[-3:]} <= ids and rows[1].id in ids and rows[0].id in ids
    assert all(any(c.id == r.id for c in kept) or r.id not in moments for r in rows[-3:])
    assert not to_prune(kept, 3)  # nothing more to prune
    assert len(kept) < len(rows)
    files = {p.name for p in (home / "checkpoints" / s.db_id).glob("*.safetensors")}
    assert files == {Path(c.file).name for c in kept}  # pruned rows took their files along
    for c in kept:
        assert_restores(load_chain(eng.persistence.layout, kept, c), moments[c.id])
    with pytest.raises(CheckpointError, match="named snapshot"):
        store.delete_checkpoint(rows[1].id)
    # untagged, the next save prunes it
    result = CliRunner().invoke(
        cli,
        [
            "sessions",
            "untag",
            "chat",
            "before-refactor",
            "--home",
            str(home),
            "--db",
            f"sqlite:///{home / 'agentrt.db'}",
        ],
    )
    assert result.exit_code == 0, result.output
    rows += grow(eng, s, 1, moments)
    assert rows[1].id not in {c.id for c in store.checkpoints("chat")}
    # a pinned session keeps everything
    store.tag_session("chat", pinned=True)
    before = len(store.checkpoints("chat"))
    grow(eng, s, 4, moments)
    assert len(store.checkpoints("chat")) == before + 4
    eng.close()


def test_tag_cli_and_gc_never_touch_a_session_in_use(model_dir: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    db = f"sqlite:///{home / 'agentrt.db'}"
    eng = engine(model_dir, home, checkpoints=CheckpointPolicy(keep=None))
    s = eng.new_session("chat", seed=5)
    s.prefill(list(range(3, 40)))
    grow(eng, s, 5, {})
    opts = ["--home", str(home), "--db", db]
    tagged = CliRunner().invoke(cli, ["sessions", "tag", "chat", "v1", "--checkpoint", "2", *opts])
    assert tagged.exit_code == 0, tagged.output
    dup = CliRunner().invoke(cli, ["sessions", "tag", "chat", "v1", *opts])
    assert dup.exit_code != 0 and "already names" in dup.output
    before = eng.persistence.store.checkpoints("chat")
    said: list[str] = []
    prune(
        eng.persistence.store,
        eng.persistence.layout,
        1,
        dry_run=False,
        say=lambda kind, text, _: said.append(kind),
        when=str,
    )
    assert said == ["skipped"]  # open in this engine: its lock is held
    assert eng.persistence.store.checkpoints("chat") == before
    eng.close()
    result = CliRunner().invoke(cli, ["sessions", "gc", "--keep", "1", *opts])
    assert result.exit_code == 0, result.output
    left = SessionStore(open_catalog(db)).checkpoints("chat")
    assert left[-1].id == before[-1].id and any(c.label == "v1" for c in left)
    assert len(left) < len(before)
    shown = CliRunner().invoke(cli, ["sessions", "show", "chat", *opts])
    assert "v1" in shown.output


def test_fork_export_and_import_of_a_chained_session(model_dir: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    db = f"sqlite:///{home / 'agentrt.db'}"
    opts = ["--home", str(home), "--db", db]
    eng = engine(model_dir, home, checkpoints=LONG_CHAINS)
    s = eng.new_session("chat", seed=5)
    s.prefill(list(range(3, 40)))
    grow(eng, s, 3, {})
    want = moment(s)
    # an in-engine fork of a chained session saves and reopens exactly
    child = eng.fork(s, "child")
    list(child.generate(3, temperature=0.9))
    eng.save(child)
    child_moment = moment(child)
    eng.close()
    runner = CliRunner()
    archive = tmp_path / "chat.tar.gz"
    for args in (["--latest"], []):
        archive.unlink(missing_ok=True)
        out = runner.invoke(cli, ["sessions", "export", "chat", str(archive), *args, *opts])
        assert out.exit_code == 0, out.output
        name = f"copy{len(args)}"
        out = runner.invoke(cli, ["sessions", "import", str(archive), "--as", name, *opts])
        assert out.exit_code == 0, out.output
    out = runner.invoke(cli, ["sessions", "fork", "chat", "forked", *opts])
    assert out.exit_code == 0, out.output
    store = SessionStore(open_catalog(db))
    assert [c.kind for c in store.checkpoints("copy1")] == ["full"] + ["incremental"] * 2
    assert [c.kind for c in store.checkpoints("copy0")] == ["full"] + ["incremental"] * 2
    assert [c.kind for c in store.checkpoints("forked")][-1] == "incremental"
    store.close()
    eng2 = engine(model_dir, home)
    for name in ("chat", "copy0", "copy1", "forked"):
        r = eng2.open_session(name)
        assert r.tokens == want["tokens"], name
        assert_state_equal(r.cache.state_dict(), want["state"])
        eng2.close_session(r)
    r = eng2.open_session("child")
    assert r.tokens == child_moment["tokens"]
    assert_state_equal(r.cache.state_dict(), child_moment["state"])
    eng2.close()


def test_save_cost_follows_the_turn_not_the_history(model_dir: Path, tmp_path: Path) -> None:
    eng = engine(model_dir, tmp_path / "home", checkpoints=CheckpointPolicy(chain_ratio=10.0))
    s = eng.new_session("chat", seed=5)
    s.prefill(list(range(3, 90)) * 12)  # a long history
    first = eng.save(s)
    deltas = []
    for t in range(30):
        s.prefill([10 + t % 40, 11 + t % 30, 12 + t % 20])
        list(s.generate(4))
        deltas.append(eng.save(s))
    assert first.kind == "full" and all(d.kind == "incremental" for d in deltas)
    full_now = save_checkpoint(
        tmp_path / "full.safetensors",
        s.cache.state_dict(),
        token_ids=list(s.tokens),
        fingerprint=eng.persistence.fingerprint,
        extra=eng.persistence.snapshot(s, full=True).extra,
    )
    early = sorted(d.size_bytes for d in deltas[1:6])[2]  # medians of 5
    late = sorted(d.size_bytes for d in deltas[25:30])[2]
    assert late <= 1.2 * early, (early, late)  # flat in session length
    assert late * 20 <= full_now.size_bytes, (late, full_now.size_bytes)
    eng.close()


def test_a_session_that_outgrows_the_pool_is_told_it_holds_the_pool(
    model_dir: Path, tmp_path: Path
) -> None:
    eng = engine(model_dir, tmp_path / "home", num_blocks=40)
    other = eng.new_session("other", seed=1)
    other.prefill(list(range(3, 10)))
    s = eng.new_session("big", seed=1)
    with pytest.raises(BudgetError) as err:
        s.prefill(list(range(3, 90)) * 8)
    text = str(err.value)
    assert "'big' (this session)" in text and "'other' (idle)" in text
    assert "raise kv_budget, or start a new session" in text
    eng.close()


def test_a_fork_saves_what_it_adds_on_its_parents_chain(model_dir: Path, tmp_path: Path) -> None:
    """A fork's first checkpoint is a delta on its parent's checkpoint; the parent's retention
    and deletion never take a link the fork needs; export makes the fork self-contained."""
    home = tmp_path / "home"
    db = f"sqlite:///{home / 'agentrt.db'}"
    opts = ["--home", str(home), "--db", db]
    eng = engine(model_dir, home, checkpoints=CheckpointPolicy(keep=1))
    s = eng.new_session("parent", seed=5)
    s.prefill([3 + i % 90 for i in range(200)])
    base = grow(eng, s, 2, {})[-1]
    child = eng.fork(s, "child")
    list(child.generate(3, temperature=0.9))
    row = eng.save(child)
    want = moment(child)
    assert row.kind == "incremental" and row.parent_id == base.id
    assert row.session_id != base.session_id
    full = eng.persistence.store.lineage("parent")[0]
    assert full.kind == "full" and row.size_bytes * 5 < full.size_bytes
    # the parent goes on with keep=1: the links the fork builds on stay
    grow(eng, s, 4, {})
    store = eng.persistence.store
    lineage = store.lineage("child")
    assert [c.session_id for c in lineage][-1] == row.session_id
    assert base.id in {c.id for c in lineage}
    assert all(eng.persistence.layout.resolve(c.file).is_file() for c in lineage)
    parent_rows = store.checkpoints("parent")
    assert base.id in {c.id for c in parent_rows} and len(parent_rows) > 1
    eng.close()
    runner = CliRunner()
    out = runner.invoke(cli, ["sessions", "show", "child", *opts])
    assert out.exit_code == 0 and "MISSING" not in out.output, out.output
    archive = tmp_path / "child.tar.gz"
    out = runner.invoke(cli, ["sessions", "export", "child", str(archive), "--latest", *opts])
    assert out.exit_code == 0, out.output
    # deleting the parent hands the links the fork needs to the fork; gc keeps their files
    out = runner.invoke(cli, ["sessions", "rm", "parent", "--yes", *opts])
    assert out.exit_code == 0, out.output
    out = runner.invoke(cli, ["sessions", "gc", *opts])
    assert out.exit_code == 0, out.output
    store = SessionStore(open_catalog(db))
    assert {c.session_id for c in store.lineage("child")} == {row.session_id}
    store.close()
    # the archive holds the whole chain: it imports into a home that never saw the parent
    home2 = tmp_path / "home2"
    opts2 = ["--home", str(home2), "--db", f"sqlite:///{home2 / 'agentrt.db'}"]
    out = runner.invoke(cli, ["sessions", "import", str(archive), *opts2])
    assert out.exit_code == 0, out.output
    for where in (home, home2):
        eng2 = engine(model_dir, where)
        r = eng2.open_session("child")
        assert r.tokens == want["tokens"]
        assert_state_equal(r.cache.state_dict(), want["state"])
        eng2.close()


def test_an_incremental_snapshot_copies_only_what_the_turn_wrote(
    model_dir: Path, tmp_path: Path
) -> None:
    """Under the engine lock a delta save copies positions and the turn's K/V rows, and the
    delta equals the one taken from a full copy of the cache."""
    eng = engine(model_dir, tmp_path / "home", checkpoints=LONG_CHAINS)
    s = eng.new_session("chat", seed=3)
    s.prefill([3 + i % 90 for i in range(600)])
    eng.save(s)
    s.prefill([5, 6, 7])
    list(s.generate(4, temperature=0.9))
    light = eng.persistence.snapshot(s)
    full = eng.persistence.snapshot(s, full=True)
    assert light.delta is not None and light.base is not None and full.delta is None
    assert "layer.0.k" not in light.state and "layer.0.k" in full.state
    want = light.base.delta(full.state, full.token_ids)
    assert want is not None and want.keys() == light.delta.keys()
    for key in want:
        assert torch.equal(light.delta[key], want[key]), key
    layers = int(full.state["ring_slot"].shape[0])
    rows = sum(light.delta[f"layer.{i}.rows"].numel() for i in range(layers))
    slots = sum(full.state[f"layer.{i}.pos"].numel() for i in range(layers))
    assert 0 < rows * 10 < slots
    row = eng.save(s)
    assert row.kind == "incremental"
    eng.close()
