"""`Router`: sticky placement of sessions on replicas, moves, drains and fail-over.

A session's requests always go to the replica whose pool holds its KV cache. A new session
goes to the live, non-draining replica with the most free KV bytes (fewest sessions on a
tie). Every placement change is written to the catalog (`placements` table). When a
replica dies, each of its sessions is reopened on another replica from its newest
checkpoint, the request that was running gets `ReplicaLost` (retryable), and its rows are
rewritten, so no placement names a dead replica.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from agentrt.cluster.config import ClusterConfig
from agentrt.cluster.errors import ReplicaLost
from agentrt.cluster.replica import ReplicaInfo, TurnResult
from agentrt.errors import AgentRTError, BudgetError, ConfigError, SessionError

if TYPE_CHECKING:
    from agentrt.sessions.placements import PlacementStore

log = logging.getLogger(__name__)


class Router:
    """Routes session requests to replica actors and keeps the catalog's placements true."""

    def __init__(self, config: ClusterConfig, placements: PlacementStore) -> None:
        from agentrt.cluster import actor

        self._ray = actor
        self.config = config
        self.placements = placements
        self.handles: dict[str, Any] = {}  # live replicas only
        self.nodes: dict[str, str | None] = {}
        self._where: dict[str, str] = {}  # session name -> replica
        self._saved: dict[str, int] = {}  # session name -> tokens of its newest checkpoint
        self._position: dict[str, int] = {}  # session name -> tokens it holds
        self._seeds: dict[str, int | None] = {}
        self.lost: dict[str, str] = {}  # session name -> why it could not be reopened
        self._lock = threading.RLock()

    @classmethod
    def start(cls, config: ClusterConfig) -> Router:
        """Connect to Ray, start the replicas (each loads the model), clear stale placements."""
        from agentrt.cluster import actor
        from agentrt.sessions.placements import open_placements

        actor.connect(config)
        router = cls(config, open_placements(config.replica.db))
        for name in config.replica_names():
            router.handles[name] = actor.start_replica(name, config, config.replica)
        try:
            for name, handle in list(router.handles.items()):
                router.nodes[name] = actor.call(handle, "node_id")  # waits for the model load
        except BaseException:
            router.shutdown(save=False)
            raise
        for p in router.placements.all():  # left by an earlier cluster of the same names
            if p.replica.startswith(config.name_prefix + "-"):
                router.placements.remove(p.session_name)
        return router

    # -- queries -----------------------------------------------------------------------
    def replicas(self) -> list[ReplicaInfo]:
        """Load of every live replica (dead ones found here are failed over)."""
        infos, gone = [], []
        for name, handle in list(self.handles.items()):
            try:
                infos.append(self._ray.call(handle, "info"))
            except self._ray.ActorGone:
                gone.append(name)
        for name in gone:
            self._fail_over(name)
        return infos

    def where(self, name: str) -> str:
        """The replica that holds session `name`."""
        with self._lock:
            if name in self.lost:
                raise SessionError(
                    f"session {name!r} was lost: {self.lost[name]}",
                    hint="start it again under a new name",
                )
            replica = self._where.get(name)
        if replica is None:
            raise SessionError(
                f"session {name!r} is not placed on any replica",
                hint="create it with new_session, or open a saved one with open_session",
            )
        return replica

    def check(self) -> list[str]:
        """Ping every replica; fail over the dead ones; returns their names."""
        before = set(self.handles)
        self.replicas()
        return sorted(before - set(self.handles))

    # -- sessions ----------------------------------------------------------------------
    def new_session(self, name: str, *, seed: int | None = None) -> str:
        """Create session `name` on the replica with the most free KV bytes; returns it."""
        with self._lock:
            if name in self._where:
                raise SessionError(f"a session named {name!r} is already placed")
            target = self._pick()
            self._call(target, "create", name, seed)
            self._seeds[name] = seed
            self._position[name] = self._saved[name] = 0
            self.lost.pop(name, None)
            self._place(name, target)
            return target

    def open_session(self, name: str) -> str:
        """Place a saved session (from the catalog) on the best replica; returns it."""
        with self._lock:
            if name in self._where:
                return self._where[name]
            target = self._pick()
            tokens = self._call(target, "open", name)
            self._saved[name] = self._position[name] = tokens
            self.lost.pop(name, None)
            self._place(name, target)
            return target

    def turn(self, name: str, ids: list[int], **sampling: Any) -> TurnResult:
        """Prefill `ids` into session `name` and generate (sampling: SamplingParams fields)."""
        _check_sampling(sampling)
        replica = self.where(name)
        result: TurnResult = self._call(replica, "turn", name, list(ids), sampling)
        with self._lock:
            self._saved[name] = result.saved_tokens
            self._position[name] = result.position
        return result

    def save(self, name: str) -> int:
        """Checkpoint session `name` now; returns the tokens saved."""
        tokens = self._call(self.where(name), "save", name)
        with self._lock:
            self._saved[name] = tokens
        return tokens

    def close_session(self, name: str, *, save: bool = True) -> None:
        """Close session `name` on its replica (saving first by default) and drop its placement."""
        replica = self.where(name)
        self._call(replica, "release" if save else "close", name)
        with self._lock:
            self._forget(name)

    def move(self, name: str, to: str | None = None) -> str:
        """Save session `name` on its replica and reopen it on `to` (default: the best other
        replica); the continuation is token for token what it would have been. Returns `to`."""
        with self._lock:
            src = self.where(name)
            if to is None:
                to = self._pick(exclude={src})
            elif to not in self.handles:
                raise SessionError(
                    f"no live replica {to!r}", hint=f"live replicas: {', '.join(self.handles)}"
                )
            if to == src:
                return src
            saved = self._call(src, "release", name)
            self._reopen(name, to, saved)
            return to

    def drain(self, replica: str) -> dict[str, str]:
        """Stop placing sessions on `replica` and move its sessions off; returns the moves."""
        if replica not in self.handles:
            raise SessionError(f"no live replica {replica!r}")
        self._call(replica, "set_draining", True)
        with self._lock:
            names = sorted(n for n, r in self._where.items() if r == replica)
        return {n: self.move(n) for n in names}

    def undrain(self, replica: str) -> None:
        """Let `replica` take new sessions again."""
        self._call(replica, "set_draining", False)

    def rebalance(self, max_used: float = 0.9) -> dict[str, str]:
        """Move the largest idle session off each replica whose KV pool is more than
        `max_used` full, to the non-draining replica under that mark with the most free
        bytes (when the session fits there); returns the moves."""
        moves: dict[str, str] = {}
        infos = self.replicas()
        under = [i for i in infos if i.used_fraction <= max_used and not i.draining]
        for info in infos:
            if info.used_fraction <= max_used or not info.sessions or not under:
                continue
            name, size = max(info.sessions.items(), key=lambda kv: (kv[1], kv[0]))
            best = max(under, key=lambda i: i.free_bytes)
            if best.free_bytes > size:
                moves[name] = self.move(name, best.name)
        return moves

    def shutdown(self, *, save: bool = True) -> None:
        """Save every session (by default), stop the replicas, drop their placements."""
        for name, handle in list(self.handles.items()):
            try:
                if save:
                    self._ray.call(handle, "shutdown")
            except Exception as err:  # noqa: BLE001 - stop the other replicas anyway
                log.error("replica %s did not shut down cleanly: %s", name, type(err).__name__)
            self._ray.kill(handle)
        with self._lock:
            for name in list(self._where):
                self._forget(name)
            self.handles.clear()
        self.placements.close()

    # -- internals ---------------------------------------------------------------------
    def _call(self, replica: str, method: str, *args: Any) -> Any:
        handle = self.handles.get(replica)
        if handle is None:
            raise ReplicaLost(f"replica {replica!r} is gone", hint="retry the request")
        try:
            return self._ray.call(handle, method, *args)
        except self._ray.ActorGone:
            moved = self._fail_over(replica)
            where = ", ".join(f"{s} → {r}" for s, r in sorted(moved.items())) or "none"
            raise ReplicaLost(
                f"replica {replica!r} died while serving this request; its sessions were "
                f"reopened from their last checkpoints ({where})",
                hint="retry the request: it runs on the new replica, from the last checkpoint",
                moved=moved,
            ) from None

    def _pick(self, exclude: set[str] | frozenset[str] = frozenset()) -> str:
        """The live, non-draining replica with the most free KV bytes (fewest sessions on a tie)."""
        infos = [i for i in self.replicas() if i.name not in exclude and not i.draining]
        if not infos:
            raise BudgetError(
                "no live replica can take a session"
                + (f" (excluded: {', '.join(sorted(exclude))})" if exclude else ""),
                hint="start more replicas, or stop draining one",
            )
        return min(infos, key=lambda i: (-i.free_bytes, len(i.sessions), i.name)).name

    def _place(self, name: str, replica: str) -> None:
        self._where[name] = replica
        self.placements.place(name, replica, self.nodes.get(replica))

    def _forget(self, name: str) -> None:
        self._where.pop(name, None)
        self.placements.remove(name)

    def _reopen(self, name: str, target: str, saved: int) -> None:
        """Put session `name` on `target`: from its checkpoint, or afresh when it held nothing."""
        if saved > 0:
            self._position[name] = self._call(target, "open", name)
        else:
            self._call(target, "create", name, self._seeds.get(name))
            self._position[name] = 0
        self._saved[name] = saved
        self._place(name, target)

    def _fail_over(self, replica: str) -> dict[str, str]:
        """Forget a dead replica; reopen its sessions elsewhere. Returns session -> new replica."""
        with self._lock:
            if self.handles.pop(replica, None) is None:
                return {}
            log.error("replica %s died; reopening its sessions elsewhere", replica)
            moved: dict[str, str] = {}
            for name in sorted(n for n, r in self._where.items() if r == replica):
                saved, held = self._saved.get(name, 0), self._position.get(name, 0)
                if saved == 0 and held > 0:  # turns ran but none was checkpointed
                    self.lost[name] = f"replica {replica!r} died before its first checkpoint"
                    self._forget(name)
                    continue
                try:
                    target = self._pick()
                    self._reopen(name, target, saved)
                    moved[name] = target
                except AgentRTError as err:  # e.g. its newest blob never reached the store
                    self.lost[name] = f"replica {replica!r} died and reopening failed: {err}"
                    self._forget(name)
            for p in self.placements.on_replica(replica):  # rows this router did not know
                self.placements.remove(p.session_name)
            return moved


def _check_sampling(sampling: dict[str, Any]) -> None:
    """ConfigError for sampling options SamplingParams does not know, or values it refuses."""
    import dataclasses

    from agentrt.engine.sampling import SamplingParams

    known = {f.name for f in dataclasses.fields(SamplingParams)}
    unknown = sorted(set(sampling) - known)
    if unknown:
        raise ConfigError(
            f"unknown sampling option(s) {', '.join(unknown)}",
            hint=f"use SamplingParams fields: {', '.join(sorted(known))}",
        )
    SamplingParams(**sampling)  # its own checks, before a replica sees the request
