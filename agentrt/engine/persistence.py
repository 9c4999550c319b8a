"""Saving sessions to checkpoints and reopening them: the engine's glue to `agentrt.sessions`.

A save is two halves: `snapshot` packs the session under the engine lock (CPU copies of
the live slots, the token ids, the sampler state), and `write` puts the blob on disk
(temp file, fsync, rename) and commits the catalog rows outside it, so other sessions keep
stepping while a checkpoint is written. The file layout and the per-session lock belong
to `agentrt.sessions`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from agentrt.dms.kv_pool import KVPool
    from agentrt.dms.session_cache import SessionCache
    from agentrt.engine.model import ServingModel
    from agentrt.engine.session import Session
    from agentrt.sessions import (
        CheckpointInfo,
        Fingerprint,
        LoadedCheckpoint,
        SessionInfo,
        SessionStore,
    )
    from agentrt.sessions.layout import SessionLayout
    from agentrt.sessions.locks import SessionLock

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AutosavePolicy:
    """When the engine saves a session by itself (None = never for that trigger)."""

    every_tokens: int | None = None
    every_turns: int | None = None
    every_seconds: float | None = None
    on_exit: bool = True


@dataclass(frozen=True)
class Snapshot:
    """Everything a checkpoint holds, copied from a session under the engine lock."""

    session_id: str
    name: str
    db_id: str | None
    seed: int | None
    state: dict[str, torch.Tensor] = field(repr=False)  # SessionCache.state_dict()
    token_ids: list[int] = field(repr=False)
    extra: dict[str, torch.Tensor] = field(repr=False)
    stats: dict[str, int | float]  # tokens, slots, kv_bytes, compression_ratio

    @property
    def tokens(self) -> int:
        """Token ids the snapshot covers."""
        return len(self.token_ids)


@dataclass(frozen=True)
class Restored:
    """A catalogued session read back: its row, its cache in the pool, and its sampler state."""

    info: SessionInfo
    cache: SessionCache
    token_ids: list[int] = field(repr=False)
    seed: int | None
    rng_state: torch.Tensor | None = field(repr=False)
    last_logits: torch.Tensor | None = field(repr=False)  # [V] fp32
    pending_token: int | None = None


class Persistence:
    """Catalog and checkpoint files of one engine (opened lazily on first use)."""

    def __init__(
        self, layout: SessionLayout, db_url: str, model: ServingModel, pool: KVPool, window: int
    ) -> None:
        self.layout = layout
        self.db_url = db_url
        self.model = model
        self.pool = pool
        self.window = window
        self._store: SessionStore | None = None
        self._fingerprint: Fingerprint | None = None
        self._locks: dict[str, SessionLock] = {}

    # -- lazily opened pieces ----------------------------------------------------------------
    @property
    def store(self) -> SessionStore:
        """The SessionStore (migrates the DB on first use)."""
        if self._store is None:
            from agentrt.sessions import SessionStore, open_catalog
            from agentrt.sessions.atomic import ensure_private_dir

            ensure_private_dir(self.layout.home)
            self._store = SessionStore(open_catalog(self.db_url))
        return self._store

    @property
    def fingerprint(self) -> Fingerprint:
        """The model's fingerprint (weights hashed from its folder when it has one)."""
        if self._fingerprint is None:
            from agentrt.sessions import model_fingerprint
            from agentrt.sessions.atomic import ensure_private_dir

            ensure_private_dir(self.layout.home)
            self._fingerprint = model_fingerprint(
                self.model, model_dir=self.model.source_dir, cache_dir=self.layout.home
            )
        return self._fingerprint

    def model_name(self) -> str:
        """A human name for the model (its folder, or its architecture)."""
        src = self.model.source_dir
        return str(src) if src is not None else self.model.arch.model_type

    # -- single writer across processes ------------------------------------------------------
    def lock(self, session_id: str, name: str) -> None:
        """Hold the session's lock; SessionError if another process has it."""
        if session_id not in self._locks:
            from agentrt.sessions.locks import SessionLock

            self._locks[session_id] = SessionLock.acquire(self.layout, session_id, name)

    def unlock(self, session_id: str) -> None:
        """Release the session lock (on close)."""
        lock = self._locks.pop(session_id, None)
        if lock is not None:
            lock.release()

    # -- save --------------------------------------------------------------------------------
    def snapshot(self, session: Session) -> Snapshot:
        """Copy what a checkpoint of a resident session holds (call under the engine lock)."""
        cache = session.cache
        assert cache is not None, f"session {session.name!r} is not resident"
        extra = {"rng_state": session.generator.get_state()}
        if session.last_logits is not None:
            extra["last_logits"] = session.last_logits.clone()
        if session.pending_token is not None:
            extra["pending_token"] = torch.tensor([session.pending_token], dtype=torch.int64)
        st = cache.stats()
        return Snapshot(
            session_id=session.id,
            name=session.name,
            db_id=session.db_id,
            seed=session.seed,
            state=cache.state_dict(),
            token_ids=list(session.tokens),
            extra=extra,
            stats={k: st[k] for k in ("tokens", "slots", "kv_bytes", "compression_ratio")},
        )

    def write(self, snap: Snapshot, db_id: str | None) -> CheckpointInfo:
        """Write the blob crash-safely, then its catalog rows (no engine lock needed; the
        engine runs one write at a time)."""
        from agentrt.sessions.checkpoint import save_checkpoint

        store = self.store
        if db_id is None:
            dms = self.model.dms
            db_id = store.create_session(
                snap.name,
                self.model_name(),
                self.fingerprint.digest,
                dms.to_hf_dict() if dms is not None else {},
            ).id
        self.lock(db_id, snap.name)
        parent = store.latest_checkpoint(db_id)
        path = self.layout.new_blob(db_id, snap.tokens)
        info = save_checkpoint(
            path,
            snap.state,
            token_ids=snap.token_ids,
            fingerprint=self.fingerprint,
            extra=snap.extra,
            metadata={"session": snap.name, "seed": str(snap.seed)},
        )
        row = store.add_checkpoint(
            db_id,
            file=self.layout.relative(path),
            size_bytes=info.size_bytes,
            sha256=info.sha256,
            tokens=info.tokens,
            slots=info.slots,
            compression_ratio=info.compression_ratio,
            fingerprint=info.fingerprint,
            format_version=info.format_version,
            parent_id=parent.id if parent is not None else None,
        )
        store.update_session_stats(db_id, **snap.stats)
        log.info("saved session %s (%d tokens, %d bytes)", snap.name, info.tokens, info.size_bytes)
        return row

    # -- open --------------------------------------------------------------------------------
    def load(self, name_or_id: str) -> tuple[SessionInfo, LoadedCheckpoint]:
        """Verify and read the newest checkpoint of a catalogued session (and lock it)."""
        from agentrt.sessions.checkpoint import CheckpointFileMissing, load_checkpoint

        store = self.store
        info = store.get_session(name_or_id)
        ckpt = store.latest_checkpoint(info.id)
        if ckpt is None:
            from agentrt.errors import CheckpointError

            raise CheckpointError(f"session {info.name!r} has no checkpoint to resume from")
        self.lock(info.id, info.name)
        try:
            loaded = load_checkpoint(
                self.layout.resolve(ckpt.file),
                expected_sha256=ckpt.sha256,
                expected_size=ckpt.size_bytes,
                fingerprint=self.fingerprint,
            )
        except CheckpointFileMissing:
            self.unlock(info.id)
            store.mark_checkpoint_missing(ckpt.id)
            raise
        except BaseException:
            self.unlock(info.id)
            raise
        return info, loaded

    def blocks_to_restore(self, loaded: LoadedCheckpoint) -> int:
        """Pool blocks the checkpoint's cache needs."""
        from agentrt.dms.cache_state import validate_state

        return self.pool.spec.blocks_for_streams(validate_state(loaded.state)[3])

    def restore(self, info: SessionInfo, loaded: LoadedCheckpoint) -> Restored:
        """Rebuild the cache of a loaded checkpoint in the pool (the caller made room)."""
        from agentrt.dms.session_cache import SessionCache

        try:
            cache = SessionCache.from_state(loaded.state, self.pool, window=self.window)
        except BaseException:
            self.unlock(info.id)
            raise
        seed = loaded.metadata.get("seed")
        extra = loaded.extra
        return Restored(
            info=info,
            cache=cache,
            token_ids=list(loaded.token_ids),
            seed=int(seed) if seed not in (None, "None") else None,
            rng_state=extra.get("rng_state"),
            last_logits=extra["last_logits"].float() if "last_logits" in extra else None,
            pending_token=int(extra["pending_token"][0]) if "pending_token" in extra else None,
        )


def autosave_due(session: Session, policy: AutosavePolicy) -> bool:
    """Count a finished turn; True when `policy` says the session should be saved now."""
    if session.closed or session.active is not None or not session.dirty:
        return False
    session.turns_since_save += 1
    unsaved = len(session.tokens) - session.saved_tokens
    return (
        (policy.every_tokens is not None and unsaved >= policy.every_tokens)
        or (policy.every_turns is not None and session.turns_since_save >= policy.every_turns)
        or (
            policy.every_seconds is not None
            and time.monotonic() - session.saved_at >= policy.every_seconds
        )
    )
