"""`Replica`: one Engine and the sessions it holds, driven by the router by session name.

A plain class (tested without Ray); `agentrt.cluster.actor` runs it as a Ray actor. Every
method takes and returns plain data (names, token ids, dataclasses), never a Session.
After each turn the session is checkpointed as `ReplicaConfig.save_every_turns` says; the
blob goes to the shared store when there is one, so any other replica can reopen it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentrt.cluster.config import ReplicaConfig
from agentrt.errors import SessionError

if TYPE_CHECKING:
    from agentrt.engine import Engine, Session

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplicaInfo:
    """A replica's load as the router balances by it: free KV bytes and its sessions."""

    name: str
    free_bytes: int
    total_bytes: int
    sessions: dict[str, int] = field(default_factory=dict)  # name -> KV bytes held
    draining: bool = False

    @property
    def used_fraction(self) -> float:
        """Share of the KV pool in use (0..1)."""
        return 1.0 - self.free_bytes / self.total_bytes if self.total_bytes else 1.0


@dataclass(frozen=True)
class TurnResult:
    """What one turn produced and where the session's last checkpoint stands."""

    tokens: list[int]
    position: int  # tokens the session holds after the turn
    saved_tokens: int  # tokens covered by its newest checkpoint (0: never saved)


class Replica:
    """One Engine serving sessions by name for the router."""

    def __init__(self, name: str, config: ReplicaConfig, *, engine: Engine | None = None) -> None:
        self.name = name
        self.config = config
        home = Path(config.home)
        if config.store is not None:
            home = home / "replicas" / name  # local copies; the store is what is shared
        self.engine = engine if engine is not None else _build_engine(config, home)
        self.mirror = None
        if config.store is not None:
            from agentrt.cluster.blobs import BlobMirror

            self.mirror = BlobMirror(config.store, self.engine.persistence.layout.home)
        self.draining = False
        self._turns: dict[str, int] = {}  # turns since the last save, per session

    # -- load --------------------------------------------------------------------------
    def info(self) -> ReplicaInfo:
        """Free KV bytes, the sessions held and their bytes (swapped ones count 0)."""
        pool = self.engine.pool
        held = {}
        for s in list(self.engine.sessions.values()):
            held[s.name] = s.cache.stats()["kv_bytes"] if s.cache is not None else 0
        return ReplicaInfo(
            name=self.name,
            free_bytes=pool.num_free * pool.bytes_per_block,
            total_bytes=pool.num_blocks * pool.bytes_per_block,
            sessions=held,
            draining=self.draining,
        )

    def ping(self) -> str:
        """The replica's name (a liveness probe)."""
        return self.name

    def set_draining(self, draining: bool = True) -> None:
        """A draining replica gets no new sessions (the router moves its sessions off)."""
        self.draining = draining

    # -- sessions ----------------------------------------------------------------------
    def create(self, name: str, seed: int | None = None) -> None:
        """A new empty session `name` (unsaved until its first turn's checkpoint)."""
        if self.engine.persistence.store.name_taken(name) is not None:
            raise SessionError(
                f"a saved session named {name!r} already exists",
                hint="open it (Router.open_session) or choose another name",
            )
        self.engine.new_session(name, seed=seed)
        self._turns[name] = 0

    def open(self, name: str) -> int:
        """Reopen a saved session from its newest checkpoint; returns the tokens it holds."""
        if self.mirror is not None:
            self._pull_newest(name)
        session = self.engine.open_session(name)
        self._turns[name] = 0
        return len(session.tokens)

    def turn(self, name: str, ids: list[int], sampling: dict[str, Any]) -> TurnResult:
        """Prefill `ids`, generate with `sampling` (SamplingParams fields), then checkpoint
        when due; returns the generated ids."""
        from agentrt.engine.sampling import SamplingParams

        params = SamplingParams(**sampling)
        session = self._session(name)
        if ids:
            session.prefill(ids)
        tokens = list(session.generate(params=params)) if params.max_new_tokens else []
        every = self.config.save_every_turns
        self._turns[name] = self._turns.get(name, 0) + 1
        if every and self._turns[name] >= every:
            self.save(name)
        return TurnResult(tokens, len(session.tokens), session.saved_tokens)

    def save(self, name: str) -> int:
        """Checkpoint a session now (and push the blob to the store); returns tokens saved."""
        session = self._session(name)
        row = self.engine.save(session)
        if self.mirror is not None:
            self.mirror.push(row.file)
        self._turns[name] = 0
        return row.tokens

    def release(self, name: str) -> int:
        """Save and close a session so another replica can open it; returns tokens saved."""
        session = self._session(name)
        tokens = self.save(name) if session.dirty else session.saved_tokens
        self.close(name)
        return tokens

    def close(self, name: str) -> None:
        """Close a session here without saving (its last checkpoint stays)."""
        session = self._session(name)
        self.engine.close_session(session)
        self._turns.pop(name, None)

    def position(self, name: str) -> int:
        """Tokens a session holds here."""
        return len(self._session(name).tokens)

    def shutdown(self) -> None:
        """Save every session that has unsaved tokens, then close the engine."""
        for s in list(self.engine.sessions.values()):
            if s.dirty and s.active is None and s.error is None:
                try:
                    self.save(s.name)
                except Exception as err:  # noqa: BLE001 - one bad save must not keep the rest
                    log.error("could not save session %s: %s", s.name, type(err).__name__)
        self.engine.close()

    # -- helpers -----------------------------------------------------------------------
    def _session(self, name: str) -> Session:
        for s in list(self.engine.sessions.values()):
            if s.name == name:
                return s
        raise SessionError(f"session {name!r} is not open on replica {self.name!r}")

    def _pull_newest(self, name: str) -> None:
        """Fetch the newest checkpoint blob of `name` from the shared store."""
        assert self.mirror is not None
        store = self.engine.persistence.store
        info = store.get_session(name)
        newest = store.latest_checkpoint(info.id)
        if newest is not None:
            self.mirror.pull(newest.file)


def _build_engine(config: ReplicaConfig, home: Path) -> Engine:
    """The replica's Engine from its config (model loaded here, in the replica's process)."""
    from agentrt.engine import Engine

    kwargs: dict[str, Any] = {
        "kv_budget": config.kv_budget,
        "kv_dtype": config.kv_dtype,
        "num_blocks": config.num_blocks,
        "block_size": config.block_size,
        "home": home,
        "db": config.db,
    }
    if config.dms == "off":
        from agentrt.dms.policies import make_policy

        kwargs["policy"] = make_policy("dense")
    return Engine.from_pretrained(config.model, device=config.device, **kwargs)
