"""Saving sessions to checkpoints and reopening them: the engine's glue to `agentrt.sessions`.

A save is two halves: `snapshot` copies the session under the engine lock (the token ids,
the sampler state, and either every live slot or, for an incremental save, the positions of
the slots and the K/V of only those written since the previous checkpoint), and `write`
puts the blob on disk (temp file, fsync, rename) and commits the catalog rows outside it,
so other sessions keep stepping while a checkpoint is written. The file layout and the per-session lock belong
to `agentrt.sessions`.

Saves chain: each session's newest checkpoint is kept as a `DeltaBase` (positions and
expiries only), so the next save writes only what changed (`agentrt.sessions.delta`) unless
the `CheckpointPolicy` asks for a full one. After every save, retention prunes the session's
old restore points (`agentrt.sessions.retention`); opening reads a whole chain
(`agentrt.sessions.chain`).
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from pathlib import Path

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
    from agentrt.sessions.checkpoint import CheckpointFileInfo
    from agentrt.sessions.delta import DeltaBase
    from agentrt.sessions.layout import SessionLayout
    from agentrt.sessions.locks import SessionLock
    from agentrt.sessions.retention import CheckpointPolicy

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
    pinned: bool = False  # a pinned session keeps every checkpoint
    # an incremental save: the delta on `base`; `state` then holds no K/V (cache_rows)
    delta: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    base: DeltaBase | None = field(default=None, repr=False)

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


# What a first resume or save imports: the catalog (SQLAlchemy's ORM and its SQLite dialect,
# the default catalog's), the checkpoint readers and the cache unpacker; ~0.25 s on 2 cores.
CATALOG_MODULES = (
    "agentrt.sessions.store",
    "agentrt.sessions.database",
    "sqlalchemy.dialects.sqlite",
    "agentrt.sessions.chain",
    "agentrt.sessions.checkpoint",
    "agentrt.sessions.delta",
    "agentrt.sessions.fingerprint",
    "agentrt.sessions.locks",
    "agentrt.dms.cache_state",
)
_prefetch_lock = threading.Lock()
_prefetch_thread: threading.Thread | None = None


def prefetch_catalog() -> threading.Thread:
    """Import the catalog's modules on a daemon thread (once per process), so a first resume
    or save that comes after loading the weights does not wait for them."""
    global _prefetch_thread
    with _prefetch_lock:
        if _prefetch_thread is None:
            _prefetch_thread = threading.Thread(
                target=_import_catalog, name="agentrt-catalog-import", daemon=True
            )
            _prefetch_thread.start()
        return _prefetch_thread


def _import_catalog() -> None:
    try:
        for name in CATALOG_MODULES:
            importlib.import_module(name)
        from sqlalchemy.orm import configure_mappers

        configure_mappers()  # what the first ORM query would do
    except Exception as exc:  # noqa: BLE001 - the first real use reports it properly
        log.debug("catalog prefetch stopped: %s", exc)


class Persistence:
    """Catalog and checkpoint files of one engine (opened lazily on first use)."""

    def __init__(
        self,
        layout: SessionLayout,
        db_url: str,
        model: ServingModel,
        pool: KVPool,
        window: int,
        policy: CheckpointPolicy | None = None,
    ) -> None:
        from agentrt.sessions.retention import CheckpointPolicy

        self.layout = layout
        self.db_url = db_url
        self.model = model
        self.pool = pool
        self.window = window
        self.policy = policy if policy is not None else CheckpointPolicy()
        self._store: SessionStore | None = None
        self._fingerprint: Fingerprint | None = None
        self._locks: dict[str, SessionLock] = {}
        self._bases: dict[str, DeltaBase] = {}  # session id → what its next delta is taken on
        self._forked: dict[str, DeltaBase] = {}  # unsaved fork (runtime id) → its parent's base

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

    def close(self) -> None:
        """Release the catalog's connections (reopened lazily if used again)."""
        if self._store is not None:
            self._store.close()
            self._store = None

    # -- single writer across processes ------------------------------------------------------
    def lock(self, session_id: str, name: str) -> None:
        """Hold the session's lock; SessionError if another process has it."""
        if session_id not in self._locks:
            from agentrt.sessions.locks import SessionLock

            self._locks[session_id] = SessionLock.acquire(self.layout, session_id, name)

    def unlock(self, session_id: str) -> None:
        """Release the session lock (on close); its next save after reopening starts anew."""
        self._bases.pop(session_id, None)
        lock = self._locks.pop(session_id, None)
        if lock is not None:
            lock.release()

    def mark_closed(self, session_id: str) -> None:
        """Record a closed session as saved (its newest checkpoint is what reopens), then
        release its lock."""
        from agentrt.errors import AgentRTError

        try:
            if self._store is not None:
                self._store.set_status(session_id, "saved")
        except AgentRTError as err:  # closing must not fail on the catalog
            log.warning("could not mark session %s saved: %s", session_id, err)
        finally:
            self.unlock(session_id)

    # -- save --------------------------------------------------------------------------------
    def inherit(self, child_id: str, parent_db_id: str | None) -> None:
        """A fork (runtime id `child_id`) of a saved session: its first save may be a delta on
        the parent's newest checkpoint, so the fork's checkpoint costs what the fork adds."""
        base = self._bases.get(parent_db_id) if parent_db_id is not None else None
        if base is not None:
            self._forked[child_id] = base

    def forget(self, runtime_id: str) -> None:
        """Drop what a closed, never-saved fork inherited."""
        self._forked.pop(runtime_id, None)

    def snapshot(self, session: Session, *, full: bool = False) -> Snapshot:
        """Copy what a checkpoint of a resident session holds (call under the engine lock).

        When the session's next save can be a delta (and not `full`), only the positions of
        its slots and the K/V of the slots written since its previous checkpoint are copied,
        so the time spent under the lock follows what changed, not the session's length.
        """
        cache = session.cache
        assert cache is not None, f"session {session.name!r} is not resident"
        extra = {"rng_state": session.generator.get_state()}
        if session.last_logits is not None:
            extra["last_logits"] = session.last_logits.clone()
        if session.pending_token is not None:
            extra["pending_token"] = torch.tensor([session.pending_token], dtype=torch.int64)
        st = cache.stats()
        tokens = list(session.tokens)
        base = None if full else self._live_base(session)
        state, delta = None, None
        if base is not None:
            from agentrt.dms.cache_rows import gather_kv, pack_positions

            light, flats = pack_positions(cache)
            shape = (self.pool.spec.head_dim, self.pool.kv.dtype)
            delta = base.delta(
                light,
                tokens,
                kv=lambda layer, rows: gather_kv(cache, flats[layer], rows),
                kv_shape=shape,
            )
            if delta is not None and not self._wants_full(base, delta, extra, light, tokens):
                state = light
            else:
                base, delta = None, None
        return Snapshot(
            session_id=session.id,
            name=session.name,
            db_id=session.db_id,
            seed=session.seed,
            state=state if state is not None else cache.state_dict(),
            token_ids=tokens,
            extra=extra,
            stats={k: st[k] for k in ("tokens", "slots", "kv_bytes", "compression_ratio")},
            pinned=session.pinned,
            delta=delta,
            base=base,
        )

    def _live_base(self, session: Session) -> DeltaBase | None:
        """What the session's next delta is taken on (its previous checkpoint, or for a fork's
        first save its parent's), if that checkpoint is still in the catalog unchanged."""
        if self.policy.max_deltas == 0:
            return None
        if session.db_id is not None:
            base = self._bases.get(session.db_id)
        else:
            base = self._forked.get(session.id)
        if base is None:
            return None
        row = self.store.checkpoint(base.checkpoint_id)
        if row is None or row.missing or row.sha256 != base.sha256:
            self._bases.pop(session.db_id or "", None)  # pruned or replaced: start afresh
            self._forked.pop(session.id, None)
            return None
        return base

    def _wants_full(
        self,
        base: DeltaBase,
        delta: dict[str, torch.Tensor],
        extra: dict[str, torch.Tensor],
        light: dict[str, torch.Tensor],
        tokens: list[int],
    ) -> bool:
        """Whether the policy wants a full checkpoint instead of this delta."""
        changed = [*delta.values(), *base.changed_extra(extra).values()]
        delta_bytes = sum(t.numel() * t.element_size() for t in changed)
        slots = sum(light[f"layer.{i}.pos"].numel() for i in range(len(base.lens)))
        kv_bytes = 2 * slots * base.head_dim * base.dtype.itemsize
        full_bytes = kv_bytes + sum(t.numel() * t.element_size() for t in light.values())
        full_bytes += 8 * len(tokens)
        return self.policy.wants_full(base.chain_bytes, base.deltas, delta_bytes, full_bytes)

    def write(self, snap: Snapshot, db_id: str | None) -> CheckpointInfo:
        """Write the blob crash-safely, then its catalog rows (no engine lock needed; the
        engine runs one write at a time), then apply retention to the session.

        A session's first save locks a fresh id, writes the blob, then commits the session
        row together with its first checkpoint row: a crash leaves no row without a checkpoint.
        Later saves write a delta on the session's previous checkpoint when the policy allows.
        """
        from agentrt.sessions.checkpoint import save_checkpoint

        store = self.store
        first = db_id is None
        if first:
            db_id = self._claim_name(snap.name)
        else:
            self.lock(db_id, snap.name)
        metadata = {"session": snap.name, "seed": str(snap.seed)}
        if first:
            self._forked.pop(snap.session_id, None)  # a fork's first save: used or not, done
        base, delta = snap.base, snap.delta
        path = self.layout.new_blob(db_id, snap.tokens)
        try:
            if delta is not None and base is not None:
                row, info = self._write_delta(db_id, path, snap, base, delta, metadata, first)
            else:
                info = save_checkpoint(
                    path,
                    snap.state,
                    token_ids=snap.token_ids,
                    fingerprint=self.fingerprint,
                    extra=snap.extra,
                    metadata=metadata,
                )
                row = self._record_full(db_id, snap, info, first)
        except BaseException:
            self._bases.pop(db_id, None)
            if first:  # nothing of this session is in the catalog: leave no folder behind
                path.unlink(missing_ok=True)
                self.unlock(db_id)
                from agentrt.sessions.locks import remove_session_dir

                remove_session_dir(self.layout, db_id)
            raise
        if delta is None:
            from agentrt.sessions.delta import DeltaBase

            self._bases[db_id] = DeltaBase.of(
                row.id,
                row.sha256,
                snap.state,
                snap.token_ids,
                full_bytes=info.size_bytes,
                extra=snap.extra,
            )
        store.update_session_stats(db_id, **snap.stats)
        if not snap.pinned:  # a session pinned in the catalog is skipped by retention itself
            self.apply_retention(db_id)
        log.info(
            "saved session %s (%d tokens, %s, %d bytes)",
            snap.name,
            info.tokens,
            row.kind,
            info.size_bytes,
        )
        return row

    def _write_delta(
        self,
        db_id: str,
        path: Path,
        snap: Snapshot,
        base: DeltaBase,
        delta: dict[str, torch.Tensor],
        metadata: dict[str, str],
        first: bool = False,
    ) -> tuple[CheckpointInfo, CheckpointFileInfo]:
        """Write and record one incremental checkpoint on `base`; moves the base forward.

        `first`: the session's first save (a fork's), recorded together with its session row.
        """
        from agentrt.sessions.checkpoint import save_delta

        info = save_delta(
            path,
            delta,
            parent_sha256=base.sha256,
            parent_tokens=len(base.token_ids),
            fingerprint=self.fingerprint,
            extra=base.changed_extra(snap.extra),
            extra_names=sorted(snap.extra),
            metadata=metadata,
        )
        link = {"parent_id": base.checkpoint_id, "kind": "incremental"}
        if first:
            row = self._record_full(db_id, snap, info, True, link)
        else:
            row = self.store.add_checkpoint(db_id, **self._fields(path, info), **link)
        self._bases[db_id] = base.advanced(
            row.id,
            row.sha256,
            snap.state,
            snap.token_ids,
            delta_bytes=info.size_bytes,
            extra=snap.extra,
        )
        return row, info

    def _record_full(
        self,
        db_id: str,
        snap: Snapshot,
        info: CheckpointFileInfo,
        first: bool,
        link: dict[str, str] | None = None,
    ) -> CheckpointInfo:
        """Commit the row of a full checkpoint (with the session row on a first save); with
        `link`, the first save is a fork's delta on its parent's checkpoint."""
        store = self.store
        fields = {**self._fields(info.path, info), **(link or {})}
        if not first:
            parent = store.latest_checkpoint(db_id)
            return store.add_checkpoint(
                db_id, **fields, parent_id=parent.id if parent is not None else None
            )
        dms = self.model.dms
        store.create_session(
            snap.name,
            self.model_name(),
            self.fingerprint.digest,
            dms.to_hf_dict() if dms is not None else {},
            session_id=db_id,
            first_checkpoint=fields,
        )
        row = store.latest_checkpoint(db_id)
        assert row is not None
        return row

    def _fields(self, path: Path, info: CheckpointFileInfo) -> dict[str, object]:
        """The catalog fields of a written blob."""
        return {
            "file": self.layout.relative(path),
            "size_bytes": info.size_bytes,
            "sha256": info.sha256,
            "tokens": info.tokens,
            "slots": info.slots,
            "compression_ratio": info.compression_ratio,
            "fingerprint": info.fingerprint,
            "format_version": info.format_version,
        }

    def apply_retention(self, db_id: str) -> int:
        """Prune the session's restore points beyond the policy (its lock is held); bytes freed.

        A failure is logged, never raised: the save it follows has already succeeded.
        """
        from agentrt.errors import AgentRTError
        from agentrt.sessions.retention import prune_session

        keep = self.policy.keep
        if keep is None:
            return 0
        try:
            return prune_session(self.store, self.layout, db_id, keep)
        except (AgentRTError, OSError) as err:
            log.warning("could not prune old checkpoints of session %s: %s", db_id, err)
            return 0

    def _claim_name(self, name: str) -> str:
        """A fresh, locked session id for a first save under `name`.

        A catalog row of that name without any checkpoint (left by a crash in an older
        version, or an interrupted import) whose lock is free is removed and its name reused.
        """
        from agentrt.errors import SessionError
        from agentrt.sessions.models import new_id

        store = self.store
        taken = store.name_taken(name)
        if taken is not None:
            hint = "choose another name, or resume that session"
            if store.checkpoint_files(taken.id):
                raise SessionError(f"a session named {name!r} already exists", hint=hint)
            self.lock(taken.id, name)  # an import still writing it holds the lock
            try:
                if store.checkpoint_files(taken.id):
                    raise SessionError(f"a session named {name!r} already exists", hint=hint)
                log.warning("replacing session %s: its row has no checkpoint", name)
                store.delete_session(taken.id)
            finally:
                self.unlock(taken.id)
        db_id = new_id()
        self.lock(db_id, name)
        return db_id

    # -- open --------------------------------------------------------------------------------
    def load(
        self, name_or_id: str, checkpoint: int | None = None
    ) -> tuple[SessionInfo, LoadedCheckpoint]:
        """Lock a catalogued session, then verify and read its newest restore point (or the
        `checkpoint`-th, counting from 1 = oldest, as `agentrt sessions show` numbers them):
        a full checkpoint, or one with the chain of deltas it needs, verified link by link.

        The rows are read under the session's lock, so a save another process committed
        before the lock was taken is the one that opens. A newest checkpoint that is missing
        or corrupt is an error naming the older ones to choose from, never a silent fallback.
        """
        from agentrt.errors import CheckpointError
        from agentrt.sessions.chain import BrokenChain, load_chain

        store = self.store
        info = store.get_session(name_or_id)
        self.lock(info.id, info.name)
        ckpt: CheckpointInfo | None = None
        rows: list[CheckpointInfo] = []
        try:
            rows = store.checkpoints(info.id)
            if not rows:
                raise CheckpointError(
                    f"session {info.name!r} has no checkpoint to resume from "
                    "(its first save never completed)",
                    hint=f"remove it with `agentrt sessions rm {info.name} --yes`; "
                    "a new session of that name can then be saved",
                )
            if checkpoint is not None and not 1 <= checkpoint <= len(rows):
                raise CheckpointError(
                    f"session {info.name!r} has checkpoints 1 to {len(rows)}, not {checkpoint}",
                    hint=f"list them with `agentrt sessions show {info.name}`",
                )
            number = checkpoint or len(rows)
            ckpt = rows[number - 1]
            if ckpt.missing:
                raise CheckpointError(f"checkpoint {number} ({ckpt.id[:8]}) is marked missing")
            every = store.lineage(info.id) if any(c.kind == "incremental" for c in rows) else rows
            loaded = load_chain(
                self.layout, every, ckpt, fingerprint=self.fingerprint, session=info.name
            )
        except CheckpointError as err:
            self.unlock(info.id)
            if ckpt is None:
                raise
            lost = isinstance(err, BrokenChain) and err.link is not None
            if lost and not err.link.missing:
                store.mark_checkpoint_missing(err.link.id)
            if checkpoint is not None or not (ckpt.missing or lost):
                raise
            raise self._newest_lost(info, rows, err) from None
        except BaseException:
            self.unlock(info.id)
            raise
        self._bases[info.id] = self._base_of(every, ckpt, loaded)
        info = store.set_status(info.id, "active")
        return info, loaded

    def _base_of(
        self, rows: list[CheckpointInfo], ckpt: CheckpointInfo, loaded: LoadedCheckpoint
    ) -> DeltaBase:
        """The delta base a restored checkpoint gives the session's next save."""
        from agentrt.sessions.chain import chain_of
        from agentrt.sessions.delta import DeltaBase

        chain = chain_of(rows, ckpt)
        return DeltaBase.of(
            ckpt.id,
            ckpt.sha256,
            loaded.state,
            loaded.token_ids,
            full_bytes=chain[0].size_bytes,
            chain_bytes=sum(c.size_bytes for c in chain[1:]),
            deltas=len(chain) - 1,
            extra=loaded.extra,
        )

    def _newest_lost(
        self, info: SessionInfo, rows: list[CheckpointInfo], err: Exception
    ) -> Exception:
        """The loud error for a session whose newest checkpoint cannot be read."""
        from agentrt.errors import CheckpointError
        from agentrt.sessions.chain import chain_usable

        rows = self.store.checkpoints(info.id)  # with the links just marked missing
        every = self.store.lineage(info.id)
        usable = [
            n for n, c in enumerate(rows[:-1], start=1) if chain_usable(every, c, self.layout)
        ]
        why = err.message if isinstance(err, CheckpointError) else str(err)
        message = (
            f"the newest checkpoint of session {info.name!r} (checkpoint {len(rows)}) "
            f"is missing or corrupt: {why}"
        )
        if not usable:
            return CheckpointError(message + "; no older checkpoint is usable either")
        return CheckpointError(
            message + f"; older usable checkpoints: {', '.join(map(str, usable))}",
            hint=f"resume from an older one on purpose: `agentrt resume {info.name} "
            f"--checkpoint {usable[-1]}` (Engine.open_session(name, checkpoint=N)); "
            f"what was saved after it is lost",
        )

    def blocks_to_restore(self, loaded: LoadedCheckpoint) -> int:
        """Pool blocks the checkpoint's cache needs."""
        from agentrt.dms.cache_state import validate_state

        return self.pool.spec.blocks_for_streams(validate_state(loaded.state)[3])

    def restore(self, info: SessionInfo, loaded: LoadedCheckpoint) -> Restored:
        """Rebuild the cache of a loaded checkpoint in the pool (the caller made room)."""
        from agentrt.dms.session_cache import SessionCache

        saved, pooled = loaded.state["layer.0.k"].dtype, self.pool.kv.dtype
        if saved != pooled:  # saved by an engine with another kv_dtype (an older default)
            name = str(saved).removeprefix("torch.")
            log.warning(
                "session %s holds K/V in %s; converting them to this engine's %s storage%s "
                "(open it with kv_dtype=%r, --kv-dtype %s or AGENTRT_KV_DTYPE=%s to keep them)",
                info.name,
                name,
                str(pooled).removeprefix("torch."),
                "" if pooled.itemsize >= saved.itemsize else ", rounding them",
                name,
                name,
                name,
            )
        try:
            cache = SessionCache.from_state(
                loaded.state, self.pool, window=self.window, convert=True
            )
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


def _lost(err: BaseException) -> bool:
    """Whether a load error means the file is gone or damaged (not a model mismatch)."""
    from agentrt.sessions.checkpoint import CheckpointCorrupt, CheckpointFileMissing

    return isinstance(err, CheckpointFileMissing | CheckpointCorrupt)


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
