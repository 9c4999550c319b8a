"""Two CPU replicas on Ray, the catalog on PostgreSQL (when CI runs one), checkpoints on a
shared fsspec store (a file:// URL): spread, continue, move, and a replica killed mid-turn.

Every continuation is compared token for token with one local Engine running the same turns
one after another (greedy, one request at a time, so batching never changes the numbers).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentrt import Engine
from tests.cluster.conftest import catalog_url, unique

GEN = {"max_new_tokens": 6, "ignore_eos": True}


def prompt(i: int, turn: int) -> list[int]:
    """A distinct prompt of token ids for session i, turn `turn`."""
    return [(7 * i + 13 * turn + k * 5) % 390 + 3 for k in range(5 + i % 3)]


class Reference:
    """The same turns on one local engine: what the cluster must reproduce."""

    def __init__(self, model: Path, home: Path) -> None:
        self.engine = Engine.from_pretrained(
            model, device="cpu", num_blocks=2000, block_size=8, home=home,
            db=f"sqlite:///{home / 'ref.db'}",
        )  # fmt: skip
        self.sessions: dict[str, object] = {}

    def turn(self, name: str, ids: list[int]) -> list[int]:
        s = self.sessions.get(name) or self.engine.new_session(name)
        self.sessions[name] = s
        s.prefill(ids)
        return list(s.generate(**GEN))


@pytest.fixture(scope="module")
def router(ray_cluster, cluster_model, tmp_path_factory) -> Iterator[object]:
    from agentrt.cluster import ClusterConfig, ReplicaConfig, Router

    base = tmp_path_factory.mktemp("cluster")
    config = ClusterConfig(
        ReplicaConfig(
            model=str(cluster_model), db=catalog_url(base), home=str(base / "home"),
            num_blocks=2000, block_size=8, store=f"file://{base / 'store'}",
        ),
        replicas=2,
    )  # fmt: skip
    r = Router.start(config)
    yield r
    r.shutdown()


@pytest.fixture(scope="module")
def reference(cluster_model, tmp_path_factory) -> Iterator[Reference]:
    ref = Reference(cluster_model, tmp_path_factory.mktemp("ref"))
    yield ref
    ref.engine.close()


def test_eight_sessions_spread_over_both_replicas_and_continue(router, reference):
    names = [unique(f"spread{i}") for i in range(8)]
    for n in names:
        router.new_session(n)
    placed = {n: router.where(n) for n in names}
    per = {r: sum(1 for v in placed.values() if v == r) for r in router.handles}
    assert per == {"replica-0": 4, "replica-1": 4}, per
    for turn in range(2):
        for i, n in enumerate(names):
            got = router.turn(n, prompt(i, turn), **GEN)
            assert got.tokens == reference.turn(n, prompt(i, turn)), (n, turn)
            assert got.saved_tokens == got.position  # saved after every turn (the default)
    rows = {p.session_name: p.replica for p in router.placements.all()}
    assert {n: rows[n] for n in names} == placed


def test_move_a_to_b_continues_with_identical_tokens(router, reference):
    name = unique("mover")
    a = router.new_session(name)
    assert router.turn(name, prompt(1, 0), **GEN).tokens == reference.turn(name, prompt(1, 0))
    b = router.move(name)
    assert b != a and router.where(name) == b
    assert router.placements.get(name).replica == b
    assert router.turn(name, prompt(1, 1), **GEN).tokens == reference.turn(name, prompt(1, 1))
    infos = {i.name: i for i in router.replicas()}
    assert name in infos[b].sessions and name not in infos[a].sessions


def test_user_errors_come_back_as_agentrt_errors(router, reference):
    from agentrt.errors import ConfigError, SessionError

    name = unique("errs")
    router.new_session(name)
    with pytest.raises(ConfigError, match="unknown sampling option"):
        router.turn(name, [5], temprature=0.5)
    with pytest.raises(
        SessionError, match="outside the model's vocabulary"
    ):  # raised in the replica
        router.turn(name, [10**6], **GEN)
    with pytest.raises(SessionError, match="not placed"):
        router.turn(unique("nobody"), [5], **GEN)
    assert router.turn(name, [5, 6], **GEN).tokens == reference.turn(name, [5, 6])
    router.close_session(name)  # saved and closed: no placement left
    assert router.placements.get(name) is None
    with pytest.raises(SessionError, match="already exists"):  # saved: open it instead
        router.new_session(name)
    assert router.open_session(name) in router.handles
    assert router.turn(name, [7], **GEN).tokens == reference.turn(name, [7])


def test_drain_moves_every_session_off_and_rebalance_moves_back(router, reference):
    names = [unique(f"drain{i}") for i in range(4)]
    for i, n in enumerate(names):
        router.new_session(n)
        assert router.turn(n, prompt(i, 0), **GEN).tokens == reference.turn(n, prompt(i, 0))
    moves = router.drain("replica-0")
    assert set(moves.values()) <= {"replica-1"}
    infos = {i.name: i for i in router.replicas()}
    assert infos["replica-0"].draining and not infos["replica-0"].sessions
    assert router.new_session(unique("afterdrain")) == "replica-1"  # no new sessions there
    assert {p.replica for p in router.placements.all()} == {"replica-1"}
    # replica-1 is now "over budget" at a mark just below its use: its largest session moves
    router.undrain("replica-0")
    mark = infos["replica-1"].used_fraction - 1e-9
    biggest = max(infos["replica-1"].sessions.items(), key=lambda kv: (kv[1], kv[0]))[0]
    assert router.rebalance(max_used=mark) == {biggest: "replica-0"}
    assert router.placements.get(biggest).replica == "replica-0"
    for i, n in enumerate(names):  # moved sessions continue exactly
        assert router.turn(n, prompt(i, 1), **GEN).tokens == reference.turn(n, prompt(i, 1))


def test_killed_replica_sessions_continue_elsewhere_from_their_checkpoint(
    router, reference, ray_cluster
):
    from agentrt.cluster import ReplicaLost

    names = [unique(f"victim{i}") for i in range(4)]
    for n in names:
        router.new_session(n)
    for i, n in enumerate(names):
        assert router.turn(n, prompt(i, 0), **GEN).tokens == reference.turn(n, prompt(i, 0))
    dead = router.where(names[0])
    survivor = next(r for r in router.handles if r != dead)
    on_dead = [n for n in names if router.where(n) == dead]
    errors: list[BaseException] = []

    def long_turn() -> None:  # in flight when the replica dies
        try:
            router.turn(names[0], prompt(0, 9), max_new_tokens=5000, ignore_eos=True)
        except BaseException as err:  # noqa: BLE001 - the test inspects it
            errors.append(err)

    t = threading.Thread(target=long_turn)
    t.start()
    time.sleep(1.5)
    assert t.is_alive(), "the long turn ended before the replica was killed"
    ray_cluster.kill(router.handles[dead], no_restart=True)
    t.join(timeout=60)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], ReplicaLost), errors
    err = errors[0]
    assert err.retryable and "retry" in str(err)
    assert set(on_dead) <= set(err.moved) and set(err.moved.values()) == {survivor}
    # the catalog shows the new placement and nothing points at the dead replica
    rows = {p.session_name: p.replica for p in router.placements.all()}
    assert all(rows[n] == survivor for n in [*names, *err.moved])
    assert dead not in set(rows.values())
    assert list(router.handles) == [survivor]
    # every session continues from its last checkpoint (after turn 0): the lost turn is gone
    for i, n in enumerate(names):
        got = router.turn(n, prompt(i, 1), **GEN)
        assert got.tokens == reference.turn(n, prompt(i, 1)), n
