"""Saving sessions to checkpoints and reopening them: the engine's bridge to `agentrt.sessions`.

Layout under the home folder: `checkpoints/<session-id>/<n>.safetensors` blobs and a
`.lock` file per session that the engine holding the session keeps locked (fcntl), so a
second process cannot write the same session. The catalog DB holds the rows.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from agentrt.errors import AgentRTError, CheckpointError, SessionError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AutosavePolicy:
    """When the engine saves a session by itself (None = never for that trigger)."""

    every_tokens: int | None = None
    every_turns: int | None = None
    every_seconds: float | None = None
    on_exit: bool = True


class Persistence:
    """Catalog + checkpoint files of one engine (opened lazily on first use)."""

    def __init__(self, engine: Any, home: Path, db_url: str) -> None:
        self.engine = engine
        self.home = Path(home)
        self.db_url = db_url
        self._store = None
        self._fingerprint = None
        self._locks: dict[str, int] = {}

    # -- lazily opened pieces ----------------------------------------------------------------
    @property
    def store(self) -> Any:
        """The SessionStore (migrates the DB on first use)."""
        if self._store is None:
            from agentrt.sessions import SessionStore, open_catalog

            self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._store = SessionStore(open_catalog(self.db_url))
        return self._store

    @property
    def fingerprint(self) -> Any:
        """The model's fingerprint (weights hashed from its folder when it has one)."""
        if self._fingerprint is None:
            from agentrt.sessions import model_fingerprint

            model = self.engine.model
            self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._fingerprint = model_fingerprint(
                model, model_dir=model.source_dir, cache_dir=self.home
            )
        return self._fingerprint

    def model_name(self) -> str:
        """A human name for the model (its folder, or its architecture)."""
        model = self.engine.model
        return str(model.source_dir) if model.source_dir is not None else model.arch.model_type

    # -- single writer across processes ------------------------------------------------------
    def lock(self, session_id: str, name: str) -> None:
        """Hold an exclusive lock on the session's folder; SessionError if another process has it."""
        if session_id in self._locks:
            return
        from agentrt.sessions.atomic import ensure_private_dir

        folder = self.home / "checkpoints" / session_id
        ensure_private_dir(folder)
        fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SessionError(
                f"session {name!r} is open in another agentrt process",
                hint="close it there first, or fork it into a new session",
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._locks[session_id] = fd

    def unlock(self, session_id: str) -> None:
        """Release the session lock (on close)."""
        fd = self._locks.pop(session_id, None)
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    # -- save / open -------------------------------------------------------------------------
    def save(self, session: Any) -> Any:
        """Write a checkpoint of a resident session and record it; returns the CheckpointInfo."""
        from agentrt.sessions import save_checkpoint

        store = self.store
        if session.db_id is None:
            info = store.create_session(
                session.name,
                self.model_name(),
                self.fingerprint.digest,
                self.engine.model.dms.to_hf_dict() if self.engine.model.dms is not None else {},
            )
            session.db_id = info.id
        self.lock(session.db_id, session.name)
        parent = store.latest_checkpoint(session.db_id)
        folder = self.home / "checkpoints" / session.db_id
        path = folder / f"{int(time.time() * 1000):013d}-{len(session.tokens)}.safetensors"
        extra = {"rng_state": session.generator.get_state()}
        if session.last_logits is not None:
            extra["last_logits"] = session.last_logits
        if session.pending_token is not None:
            extra["pending_token"] = torch.tensor([session.pending_token], dtype=torch.int64)
        info = save_checkpoint(
            path,
            session.cache,
            token_ids=session.tokens,
            fingerprint=self.fingerprint,
            extra=extra,
            metadata={"session": session.name, "seed": str(session.seed)},
        )
        row = store.add_checkpoint(
            session.db_id,
            file=str(path.relative_to(self.home)),
            size_bytes=info.size_bytes,
            sha256=info.sha256,
            tokens=info.tokens,
            slots=info.slots,
            compression_ratio=info.compression_ratio,
            fingerprint=info.fingerprint,
            format_version=info.format_version,
            parent_id=parent.id if parent is not None else None,
        )
        stats = session.cache.stats()
        store.update_session_stats(
            session.db_id,
            tokens=stats["tokens"],
            slots=stats["slots"],
            kv_bytes=stats["kv_bytes"],
            compression_ratio=stats["compression_ratio"],
        )
        session.saved_tokens = len(session.tokens)
        session.saved_at = time.monotonic()
        log.info(
            "saved session %s (%d tokens, %d bytes)", session.name, info.tokens, info.size_bytes
        )
        return row

    def load(self, name_or_id: str) -> tuple[Any, Any]:
        """Verify and read the newest checkpoint of a catalogued session: (SessionInfo, LoadedCheckpoint)."""
        from agentrt.sessions import load_checkpoint

        store = self.store
        info = store.get_session(name_or_id)
        ckpt = store.latest_checkpoint(info.id)
        if ckpt is None:
            raise CheckpointError(f"session {info.name!r} has no checkpoint to resume from")
        self.lock(info.id, info.name)
        try:
            loaded = load_checkpoint(
                self.home / ckpt.file,
                expected_sha256=ckpt.sha256,
                expected_size=ckpt.size_bytes,
                fingerprint=self.fingerprint,
            )
        except CheckpointError as err:
            self.unlock(info.id)
            if "is missing" in str(err):
                store.mark_checkpoint_missing(ckpt.id)
            raise
        return info, loaded

    def open(self, name_or_id: str) -> Any:
        """Restore a catalogued session into the engine's pool (evicting idle ones to fit)."""
        from agentrt.session import Session
        from agentrt.sessions import restore_cache

        engine = self.engine
        info, loaded = self.load(name_or_id)
        try:
            bs = engine.pool.block_size
            need = sum(
                -(-int(n) // bs)
                for k, t in loaded.state.items()
                if k.endswith(".lens")
                for n in t.tolist()
            )
            while engine.pool.num_free < need and engine.swap.evict_one(set()):
                pass
            cache = restore_cache(loaded.state, engine.pool, window=engine.window)
        except BaseException:
            self.unlock(info.id)
            raise
        seed = loaded.metadata.get("seed")
        session = Session(engine, info.name, seed=int(seed) if seed not in (None, "None") else None)
        session.db_id = info.id
        session.cache = cache
        session.tokens = list(loaded.token_ids)
        if "rng_state" in loaded.extra:
            session.generator.set_state(loaded.extra["rng_state"])
        if "last_logits" in loaded.extra:
            session.last_logits = loaded.extra["last_logits"].float()
        if "pending_token" in loaded.extra:
            session.pending_token = int(loaded.extra["pending_token"][0])
        session.saved_tokens = len(session.tokens)
        return session

    def maybe_autosave(self, session: Any, policy: AutosavePolicy) -> None:
        """Save a session after a finished request when `policy` says it is due."""
        if session.closed or session.active is not None or not session.dirty:
            return
        session.turns_since_save += 1
        unsaved = len(session.tokens) - session.saved_tokens
        due = (
            (policy.every_tokens is not None and unsaved >= policy.every_tokens)
            or (policy.every_turns is not None and session.turns_since_save >= policy.every_turns)
            or (
                policy.every_seconds is not None
                and time.monotonic() - session.saved_at >= policy.every_seconds
            )
        )
        if not due:
            return
        try:
            self.engine.save(session)
        except AgentRTError as err:  # reported, never raised through another caller's step
            log.error("autosave of session %s failed: %s", session.name, err)
            session.autosave_error = err
        session.turns_since_save = 0
