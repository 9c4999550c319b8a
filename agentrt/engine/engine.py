"""`Engine`: many resident sessions on one model, continuous batching, swap when memory is full.

One engine step = schedule → run → postprocess. Scheduling is pure: the plan names the
swaps that make room, and they run before the forward. Any thread that waits for output
from its request runs the next step under the engine lock, so concurrent callers share
steps (continuous batching) without a background thread. Checkpoint writes (explicit
saves and autosaves) run outside the lock, in the caller's thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from agentrt.engine.heap import trim_heap
from agentrt.engine.memory import MemoryPlanner, blocks_to_run, budget_error
from agentrt.engine.persistence import AutosavePolicy, Persistence, autosave_due
from agentrt.engine.registry import SessionRegistry
from agentrt.engine.request import Request
from agentrt.engine.sampling import SamplingParams, sample_token
from agentrt.engine.scheduler import Scheduler, SchedulerConfig, StepPlan
from agentrt.engine.session import Session
from agentrt.engine.swap import SwapManager
from agentrt.engine.telemetry import Telemetry
from agentrt.errors import AgentRTError, SessionError

if TYPE_CHECKING:
    from agentrt.dms.config import DMSConfig
    from agentrt.dms.serving import CachePolicy
    from agentrt.engine.model import ServingModel
    from agentrt.sessions import CheckpointInfo
    from agentrt.sessions.retention import CheckpointPolicy

log = logging.getLogger(__name__)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """ "auto" → cuda when available, else cpu; ConfigError for a device this machine lacks."""
    from agentrt.engine.limits import check_device

    return check_device(device)


def describe(err: BaseException) -> str:
    """An exception as `Type: message`, or just its type when it has no message."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


class Engine:
    """Serves many long-lived sessions of one DMS model from a shared paged KV pool.

    `kv_dtype` is the dtype K/V are stored in (pool, swap, checkpoints): "auto" (bf16 where
    the model computes in fp32/bf16 and the device supports bf16), "model", "bfloat16",
    "float16", "float32" or a torch.dtype; None reads `AGENTRT_KV_DTYPE` (default auto).
    """

    def __init__(
        self,
        model: ServingModel,
        *,
        kv_budget: str | int = "1GiB",
        kv_dtype: str | torch.dtype | None = None,
        block_size: int = 16,
        num_blocks: int | None = None,
        scheduler: SchedulerConfig | None = None,
        cpu_swap_budget: str | int = "4GiB",
        swap_dir: str | Path | None = None,
        policy: CachePolicy | None = None,
        home: str | Path | None = None,
        db: str | None = None,
        autosave: AutosavePolicy | None = None,
        idle_ttl: float | None = None,
        checkpoints: CheckpointPolicy | None = None,
    ) -> None:
        from agentrt.dms.budget import parse_bytes
        from agentrt.engine.limits import allocation_failed, check_kv_budget, is_allocation_error
        from agentrt.sessions.layout import SessionLayout
        from agentrt.settings import Settings, keep_checkpoints, kv_dtype_setting, load_settings

        self.model = model
        self.tokenizer = model.tokenizer
        model.prepare_for_serving()
        if num_blocks is None:
            check_kv_budget(kv_budget, model.device)
        storage = kv_dtype if kv_dtype is not None else kv_dtype_setting()
        try:
            self.pool = model.make_pool(
                kv_budget, num_blocks=num_blocks, block_size=block_size, kv_dtype=storage
            )
        except (RuntimeError, MemoryError) as err:
            if not is_allocation_error(err):
                raise
            raise allocation_failed(err, "KV pool", kv_budget) from None
        self.policy = policy
        self.window = policy.window if policy is not None else model.window
        if scheduler is None and model.dms is not None and model.dms.chunked_prefill:
            scheduler = SchedulerConfig(prefill_chunk=model.dms.chunked_prefill)
        self.scheduler = Scheduler(scheduler)
        self.sessions = SessionRegistry()
        self.swap = SwapManager(
            self.pool,
            self.sessions,
            window=self.window,
            cpu_budget=parse_bytes(cpu_swap_budget),
            swap_dir=swap_dir,
        )
        self.telemetry = Telemetry()
        self._lock = threading.RLock()
        self._saving = threading.Lock()  # one checkpoint write at a time; never waits on _lock
        self._names = 0
        self.closed = False
        if home is not None and db is not None:
            settings = Settings(
                home=Path(home),
                db_url=db,
                model=None,
                device="auto",
                keep_checkpoints=keep_checkpoints(),
            )
        else:
            settings = load_settings(home=str(home) if home else None, db=db)
        layout = SessionLayout(home=settings.home, checkpoint_dir=settings.checkpoint_dir)
        if checkpoints is None:
            from agentrt.sessions.retention import CheckpointPolicy

            checkpoints = CheckpointPolicy(keep=settings.keep_checkpoints)
        self.persistence = Persistence(
            layout, settings.db_url, model, self.pool, self.window, checkpoints
        )
        self.autosave = autosave
        self.idle_ttl = idle_ttl  # seconds after which an idle, unpinned session leaves the pool

    @classmethod
    def from_pretrained(
        cls,
        model: str | Path | None = None,
        *,
        device: str | torch.device | None = "auto",
        dtype: torch.dtype | None = None,
        dms: DMSConfig | dict[str, Any] | str | None = None,
        **kwargs: Any,
    ) -> Engine:
        """Load a model (known name, folder or hub id; plain or DMS) and build an engine around it.

        `model=None` serves the default: `AGENTRT_MODEL`, else `smollm2-135m-instruct`
        (prepared on first use, docs/MODELS.md); `dms="off"` serves it dense. While the
        weights load, the session catalog's modules are imported on a thread, so a first
        resume or save does not wait for them.
        """
        from agentrt.dms.kv_dtype import resolve_kv_dtype
        from agentrt.engine.limits import check_kv_budget
        from agentrt.engine.persistence import prefetch_catalog
        from agentrt.models.resolve import load_resolved
        from agentrt.settings import kv_dtype_setting

        dev = resolve_device(device)
        if kwargs.get("num_blocks") is None:  # refuse a bad budget before reading any weights
            check_kv_budget(kwargs.get("kv_budget", "1GiB"), dev)
        kv_dtype = kwargs.get("kv_dtype")  # and a bad KV storage dtype
        resolve_kv_dtype(
            kv_dtype if kv_dtype is not None else kv_dtype_setting(), dtype or torch.float32, dev
        )
        prefetch_catalog()  # the catalog's imports overlap the weights' loading
        loaded = load_resolved(model, dms=dms, device=dev, dtype=dtype, home=kwargs.get("home"))
        return cls(loaded, **kwargs)

    @property
    def kv_dtype(self) -> torch.dtype:
        """The dtype K/V are stored in (the pool's); attention computes in the model's dtype."""
        return self.pool.spec.dtype

    # -- sessions ------------------------------------------------------------------------
    def new_session(
        self, name: str | None = None, *, seed: int | None = None, pinned: bool = False
    ) -> Session:
        """Create an empty session (names must be unique among open sessions)."""
        with self._lock:
            self._check_open()
            if name is None:
                self._names += 1
                name = f"session-{self._names}"
            if any(s.name == name for s in self.sessions.values()):
                raise SessionError(f"a session named {name!r} is already open")
            session = Session(self, name, seed=seed, pinned=pinned)
            session.cache = self.model.new_cache(self.pool, window=self.window)
            self.sessions.add(session)
            return session

    def get_session(self, name_or_id: str) -> Session:
        """An open session by name or id."""
        for s in self.sessions.values():
            if name_or_id in (s.name, s.id):
                return s
        raise SessionError(
            f"no open session {name_or_id!r}",
            hint=f"open sessions: {', '.join(self.sessions.names()) or 'none'}",
        )

    def open_session(self, name_or_id: str, *, checkpoint: int | None = None) -> Session:
        """An open session, or a saved one restored from its newest checkpoint (verified).

        `checkpoint=N` restores the N-th checkpoint instead (1 = oldest, as `agentrt sessions
        show` numbers them); a missing or corrupt newest one is an error, never skipped.
        """
        with self._lock:
            self._check_open()
            for s in self.sessions.values():
                if name_or_id in (s.id, s.db_id) or (s.name == name_or_id and s.db_id is not None):
                    if checkpoint is not None:
                        raise SessionError(
                            f"session {s.name!r} is already open in this engine",
                            hint="close it before restoring one of its older checkpoints",
                        )
                    return s
                if s.name == name_or_id:
                    raise SessionError(
                        f"an unsaved session named {name_or_id!r} is open in this engine",
                        hint="close or rename it before opening the saved one",
                    )
            info, loaded = self.persistence.load(name_or_id, checkpoint)
            self._make_room(self.persistence.blocks_to_restore(loaded))
            r = self.persistence.restore(info, loaded)
            session = Session(self, r.info.name, seed=r.seed)
            session.db_id = r.info.id
            session.cache = r.cache
            session.tokens = r.token_ids
            if r.rng_state is not None:
                session.generator.set_state(r.rng_state)
            session.last_logits = r.last_logits
            session.pending_token = r.pending_token
            session.saved_tokens = len(session.tokens)
            self.sessions.add(session)
            return session

    def save(self, session: Session) -> CheckpointInfo:
        """Checkpoint a session (crash-safe file, then the catalog row); returns the row info.

        The session is copied under the engine lock; the file and the rows are written
        outside it, so other sessions keep stepping meanwhile.
        """
        with self._lock:
            if session.active is not None:
                raise SessionError(f"session {session.name!r} is busy; save it between calls")
            self._require_resident(session)
            snap = self.persistence.snapshot(session)
        with self._saving:  # holding it, never take the engine lock (close() saves under it)
            if session.db_id is not None and snap.tokens < session.saved_tokens:
                newer = self.persistence.store.latest_checkpoint(session.db_id)
                if newer is not None:  # a later snapshot was written first: keep it newest
                    return newer
            row = self.persistence.write(snap, session.db_id)
            session.db_id = row.session_id
            session.saved_tokens = max(session.saved_tokens, snap.tokens)
            session.saved_at = time.monotonic()
            session.turns_since_save = 0
        return row

    def fork(self, parent: Session, name: str | None = None) -> Session:
        """A new session that continues from `parent`'s state (copy-on-write blocks)."""
        with self._lock:
            self._require_resident(parent)
            assert parent.cache is not None
            child = self.new_session(name, seed=None, pinned=False)
            assert child.cache is not None
            child.cache.free()
            child.cache = parent.cache.fork()
            child.tokens = list(parent.tokens)
            child.pending_token = parent.pending_token
            child.last_logits = parent.last_logits
            child.generator.set_state(parent.generator.get_state())
            self.persistence.inherit(child.id, parent.db_id)
            return child

    def adopt(self, target: Session, source: Session) -> None:
        """Continue `target` as `source` (a fork of it), then close `source`; nothing is re-fed."""
        with self._lock:
            for s in (target, source):
                if s.active is not None:
                    raise SessionError(f"session {s.name!r} is busy; adopt between calls")
            target.check_usable()
            self._require_resident(source)
            if target.cache is not None:
                target.cache.free()  # blocks shared with `source` stay alive through its refs
            self.swap.discard(target)
            target.cache, source.cache = source.cache, None
            target.tokens, source.tokens = source.tokens, []
            target.pending_token = source.pending_token
            target.last_logits = source.last_logits
            target.generator.set_state(source.generator.get_state())
            for key, value in source.counters.items():
                target.counters[key] += value
            target.last_used = time.monotonic()
            self.close_session(source)

    def _require_resident(self, session: Session) -> None:
        """Bring a swapped session back or raise BudgetError (and refuse broken sessions)."""
        session.check_usable()
        if session.cache is not None:
            return
        planner = MemoryPlanner(self.pool, self.sessions, self.swap)
        room = planner.reserve_session(session, 0)
        if room is None:
            need = blocks_to_run(self.pool, session, 0)
            raise budget_error(
                self.pool, self.sessions, session, need, "to come back into the pool"
            )
        self._run_swaps(list(room.swap_out), list(room.swap_in))

    def _make_room(self, blocks: int) -> None:
        """Swap idle sessions out (LRU first) until `blocks` are free, as far as possible."""
        victims = MemoryPlanner(self.pool, self.sessions, self.swap).victims_for(blocks)
        self._run_swaps(victims or [], [])  # None: it cannot fit; restoring says so

    def _run_swaps(self, out: list[Session], into: list[Session]) -> None:
        for s in out:
            if s.cache is not None:
                self.swap.swap_out(s)
        for s in into:
            if s.cache is None:
                self.swap.swap_in(s)

    def close_session(self, session: Session) -> None:
        """Free a session's KV memory and swap state, release its lock; its handle is dead."""
        self._close_session(session)
        trim_heap()  # its buffers are free now: give the memory back (see engine/heap.py)

    def _close_session(self, session: Session) -> None:
        """`close_session` without giving the heap back (the caller trims once)."""
        with self._lock:
            if session.closed:
                return
            if session.active is not None:  # a stream still open: stop it first
                self._finish(session.active, "cancelled")
            if session.cache is not None:
                session.cache.free()
                session.cache = None
            self.swap.discard(session)
            if session.db_id is not None:
                self.persistence.mark_closed(session.db_id)
            self.persistence.forget(session.id)
            session.closed = True
            self.sessions.discard(session)

    def close(self) -> None:
        """Save dirty sessions (if autosave.on_exit), then free every session and the swap files."""
        with self._lock:
            if self.closed:
                return
            try:
                if self.autosave is not None and self.autosave.on_exit:
                    for s in list(self.sessions.values()):
                        if s.dirty and s.active is None and s.error is None:
                            try:
                                self.save(s)
                            except AgentRTError as err:  # one bad save must not keep the rest open
                                log.error("could not save session %s on exit: %s", s.name, err)
            finally:
                for s in list(self.sessions.values()):
                    self._close_session(s)
                self.persistence.close()
                self.closed = True
        trim_heap()  # once for all the sessions' buffers

    def install_signal_handlers(self) -> None:
        """On SIGINT/SIGTERM: save dirty sessions (autosave.on_exit), close, then exit."""
        import signal

        def handler(signum: int, _frame: object) -> None:
            log.warning("signal %d: saving sessions before exit", signum)
            self.close()
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)

    def _check_open(self) -> None:
        if self.closed:
            raise SessionError("the engine is closed")

    # -- requests ------------------------------------------------------------------------
    def prefill(self, session: Session, ids: list[int]) -> torch.Tensor:
        """Feed token ids into a session (in shared steps); returns the logits [V] after the last."""
        vocab = self.model.vocab_size
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise SessionError(
                f"token ids {bad[:5]} are outside the model's vocabulary (0..{vocab - 1})"
            )
        limit = session.max_positions
        if limit is not None and session.position + len(ids) > limit:
            raise SessionError(
                f"session {session.name!r} holds {session.position} of the model's {limit} "
                f"positions (max_position_embeddings); {len(ids)} more tokens do not fit",
                hint="start a new session, or continue from a summary of this one",
            )
        with self._lock:
            self._check_open()
            lead = session.pending_token
            feed = ([lead] if lead is not None else []) + ids
            req = Request(session, feed, generate=False, lead=lead)
            session.pending_token = None
            self._enqueue(session, req)
        for _ in self.stream(req):
            pass
        self.run_due_autosave(session)
        assert req.logits is not None
        return req.logits

    def start_generate(self, session: Session, params: SamplingParams) -> Request | None:
        """Register a generate request now (it joins the next step); None if nothing to do."""
        with self._lock:
            if params.max_new_tokens == 0:
                return None
            if session.pending_token is None and session.last_logits is None:
                raise SessionError(f"session {session.name!r} is empty: prefill a prompt first")
            stops = set(params.stop_token_ids)
            eos = self.tokenizer.eos_token_id if self.tokenizer is not None else None
            if not params.ignore_eos and eos is not None:
                stops.add(int(eos))
            if params.seed is not None:  # a per-call seed makes this generation reproducible
                session.generator.manual_seed(int(params.seed))
            room = params.max_new_tokens
            if session.max_positions is not None:  # never past the trained positions
                room = min(room, session.max_positions - session.position)
                if room <= 0:
                    raise SessionError(
                        f"session {session.name!r} holds all {session.max_positions} positions "
                        "of the model (max_position_embeddings); nothing more can be generated",
                        hint="start a new session, or continue from a summary of this one",
                    )
            req = Request(
                session,
                [],
                generate=True,
                max_new_tokens=room,
                params=params,
                stops=frozenset(stops),
            )
            if session.pending_token is not None:
                req.pending = [session.pending_token]
                session.pending_token = None
                req.decode_phase = True
            else:
                assert session.last_logits is not None
                self._sample_into(req, session.last_logits)
            if not req.finished:
                self._enqueue(session, req)
            return req

    def cancel(self, req: Request) -> None:
        """Stop a request its caller abandoned (keeps the session consistent), then run a due
        autosave of its session outside the lock."""
        with self._lock:
            if not req.finished:
                self._finish(req, "cancelled")
        self.run_due_autosave(req.session)

    def _enqueue(self, session: Session, req: Request) -> None:
        self._check_open()
        session.active = req
        self.scheduler.add(req)

    def stream(self, req: Request) -> Iterator[int]:
        """Yield a request's tokens as steps produce them, stepping the engine while it waits."""
        out = req.out
        try:
            while True:
                while out:
                    yield out.popleft()
                if req.finished:
                    break
                with self._lock:
                    if not out and not req.finished:
                        self.step()
            if req.error is not None:
                raise req.error
        finally:
            if not req.finished:  # the caller stopped early
                with self._lock:
                    self._finish(req, "cancelled")

    def run_due_autosave(self, session: Session) -> None:
        """Save a session whose finished request made an autosave due (errors are logged)."""
        if not session.autosave_due:
            return
        session.autosave_due = False
        try:
            if not session.closed and session.active is None:
                self.save(session)
        except AgentRTError as err:  # reported, never raised through the caller's turn
            log.error("autosave of session %s failed: %s", session.name, err)
            session.autosave_error = err
        session.turns_since_save = 0

    def _finish(self, req: Request, reason: str) -> None:
        req.finished = True
        req.finish_reason = reason
        self.scheduler.remove(req)
        session = req.session
        if session.active is req:
            session.active = None
        if req.generate and req.pending:  # sampled but not fed: it leads the next call
            session.pending_token = req.pending[-1]
            req.pending.clear()
        if not req.generate and req.lead is not None and req.fed == 0:
            session.pending_token = req.lead  # nothing was fed: the sampled token still leads
        if reason in ("done", "stop", "length") and self.autosave is not None:
            if autosave_due(session, self.autosave):  # saved by the caller, off the step path
                session.autosave_due = True

    # -- the step --------------------------------------------------------------------------
    def step(self) -> dict[str, Any]:
        """Run one engine step over every session with work; returns its telemetry."""
        from agentrt.dms.serving import StepItem

        with self._lock:
            t0 = time.perf_counter()
            self.expire_idle()
            planner = MemoryPlanner(self.pool, self.sessions, self.swap)
            plan = self.scheduler.schedule(planner.reserve)
            if not plan.items:
                self._fail_unfittable(plan)
                return {}
            self._run_swaps(plan.swap_out, plan.swap_in)
            items = [
                StepItem(it.request.session.cache, torch.tensor(it.tokens, dtype=torch.long))
                for it in plan.items
            ]
            try:
                logits = self.model.step(items, policy=self.policy)
            except BaseException as err:
                self._break_sessions(plan, err)
                raise
            self.scheduler.postprocess(plan)
            self._postprocess(plan, logits)
            seconds = time.perf_counter() - t0
            for it in plan.items:  # per-session telemetry: tokens fed and step time shared
                c = it.request.session.counters
                key = (
                    "decode_tokens"
                    if it.request.decode_phase and len(it.tokens) == 1
                    else "prefill_tokens"
                )
                c[key] += len(it.tokens)
                c["steps"] += 1
                c["step_seconds"] += seconds
            return self.telemetry.record_step(plan, seconds, self.pool)

    def _break_sessions(self, plan: StepPlan, err: BaseException) -> None:
        """A forward failed part-way: the planned caches are half-advanced and cannot be trusted."""
        interrupted = isinstance(err, KeyboardInterrupt | SystemExit)
        what = "interrupted (Ctrl-C)" if isinstance(err, KeyboardInterrupt) else describe(err)
        for it in plan.items:
            req, session = it.request, it.request.session
            session.error = SessionError(
                f"session {session.name!r} lost its KV state in a failed step ({what})",
                hint="close it and reopen it from its last checkpoint (engine.open_session)",
            )
            if session.cache is not None:
                session.cache.free()
                session.cache = None
            req.error = session.error
            self._finish(req, "error")
        if interrupted:  # the user stopped it: not an engine failure
            log.warning("engine step %s; %d sessions must be reopened", what, len(plan.items))
        else:
            log.error("engine step failed for %d sessions: %s", len(plan.items), what)

    def expire_idle(self) -> int:
        """Swap out sessions idle longer than `idle_ttl` (unpinned, no request); returns how many."""
        if self.idle_ttl is None:
            return 0
        with self._lock:
            now = time.monotonic()
            stale = [s for s in self.sessions.evictable(set()) if now - s.last_used > self.idle_ttl]
            for s in stale:
                self.swap.swap_out(s)
            return len(stale)

    def _fail_unfittable(self, plan: StepPlan) -> None:
        """Nothing could run: the first deferred request cannot fit even alone."""
        if not plan.deferred:
            return
        req = plan.deferred[0]
        session = req.session
        n = 1 if req.decode_phase else min(len(req.pending), self.scheduler.config.prefill_chunk)
        need = blocks_to_run(self.pool, session, n)
        req.error = budget_error(
            self.pool,
            self.sessions,
            session,
            need,
            f"for its next {n} tokens",
            f"; {req.fed} tokens of this call were already fed and stay in the session"
            if req.fed
            else "",
        )
        self._finish(req, "error")

    def _postprocess(self, plan: StepPlan, logits: list[torch.Tensor]) -> None:
        for item, out in zip(plan.items, logits, strict=True):
            req, session = item.request, item.request.session
            session.tokens.extend(item.tokens)  # the cache has them, whatever happens next
            req.fed += len(item.tokens)
            session.last_logits = out.float().cpu()
            session.last_used = time.monotonic()
            if not item.completes_feed:
                continue
            try:
                if not req.generate:
                    req.logits = session.last_logits
                    self._finish(req, "done")
                else:
                    self._sample_into(req, session.last_logits)
            except Exception as err:  # noqa: BLE001 - fail this request only, not the batch
                req.error = err
                if not req.finished:
                    self._finish(req, "error")

    def _sample_into(self, req: Request, logits: torch.Tensor) -> None:
        """Sample the next token of a generate request and decide whether to stop."""
        session, params = req.session, req.params
        assert params is not None, "only generate requests sample"
        history = session.tokens + req.generated if params.repetition_penalty != 1.0 else []
        token = sample_token(logits, params, session.generator, history)
        req.generated.append(token)
        req.out.append(token)
        req.pending = [token]
        req.decode_phase = True
        if token in req.stops:
            self._finish(req, "stop")
        elif len(req.generated) >= req.max_new_tokens:
            self._finish(req, "length")
        elif params.stop_strings and self.tokenizer is not None:
            text = self.tokenizer.decode(req.generated, skip_special_tokens=True)
            if any(s in text for s in params.stop_strings):
                self._finish(req, "stop")

    # -- reporting -------------------------------------------------------------------------
    def session_stats(self, session: Session) -> dict[str, Any]:
        """One session's numbers: tokens, slots, bytes, compression, residency, throughput."""
        with self._lock:
            c = session.counters
            base = {
                "name": session.name,
                "id": session.id,
                "pinned": session.pinned,
                **c,
                "tokens_per_s": (c["prefill_tokens"] + c["decode_tokens"]) / c["step_seconds"]
                if c["step_seconds"]
                else 0.0,
            }
            if session.cache is not None:
                return {
                    **base,
                    "resident": "gpu" if self.pool.device.type == "cuda" else "pool",
                    **session.cache.stats(),
                }
            return {**base, "resident": self.swap.where(session), **self.swap.stats_of(session)}

    def stats(self) -> dict[str, Any]:
        """Engine-wide numbers: pool occupancy, sessions, swaps, throughput."""
        with self._lock:
            return {
                "pool": self.pool.stats(),
                "sessions": len(self.sessions),
                "resident": sum(1 for s in self.sessions.values() if s.cache is not None),
                **self.swap.counters(),
                **self.telemetry.summary(),
            }
