"""The server's state around one Engine: prefix reuse, admission, response points, shutdown.

Every method here blocks (engine calls); the routes run them in `executor` threads, so
concurrent requests share engine steps (continuous batching).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentrt.agent.chat import ChatFormat, Message
from agentrt.errors import BudgetError, SessionError
from agentrt.server.errors import APIError, not_found
from agentrt.server.prefix import PrefixIndex

if TYPE_CHECKING:
    from agentrt.engine import Engine, Session

log = logging.getLogger(__name__)


def held_ids(session: Session) -> list[int]:
    """The ids a session holds: fed tokens plus the sampled token not fed yet."""
    pending = [session.pending_token] if session.pending_token is not None else []
    return list(session.tokens) + pending


@dataclass
class Prepared:
    """A session ready to generate: its prompt length and how much of it was reused."""

    session: Session
    prompt_tokens: int
    cached_tokens: int
    blocks: int  # admission reservation, released by `finish`


class ResponseStore:
    """Stored response points (id -> session name, position, messages) in one JSON file.

    Every server on the same agentrt home shares the file (the replicas of `serve --ray`):
    a write holds an `fcntl` lock on `<file>.lock` and merges into the newest file, and a
    read re-reads the file when another process replaced it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._data: dict[str, dict[str, Any]] = {"responses": {}, "conversations": {}}
        self._stamp: tuple[int, int, int] | None = None
        with self._lock:
            self._refresh()

    @property
    def data(self) -> dict[str, dict[str, Any]]:
        """Every record, as the file holds them now."""
        with self._lock:
            self._refresh()
            return self._data

    def get(self, table: str, key: str) -> dict[str, Any] | None:
        """One record, or None."""
        with self._lock:
            self._refresh()
            return self._data[table].get(key)

    def put(self, table: str, key: str, record: dict[str, Any]) -> None:
        """Write one record and the file (under the file lock; temp file, then rename)."""
        import fcntl

        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._refresh()
                self._data[table][key] = record
                tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps(self._data))
                os.replace(tmp, self.path)
                self._stamp = _stamp(self.path)
            finally:
                os.close(fd)  # releases the flock

    def _refresh(self) -> None:
        """Re-read the file when it changed since this process last read or wrote it."""
        stamp = _stamp(self.path)
        if stamp is not None and stamp != self._stamp:
            self._data = json.loads(self.path.read_text())
            self._stamp = stamp


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime) of a file, or None when it does not exist."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class Service:
    """One engine served over HTTP: sessions, prefix index, admission and response points."""

    def __init__(
        self,
        engine: Engine,
        *,
        model_name: str,
        state_dir: Path,
        max_tokens_cap: int = 4096,
        default_max_tokens: int = 256,
        request_timeout: float = 600.0,
        queue_timeout: float = 30.0,
        max_cached_sessions: int = 32,
        save_every_turn: bool = False,
    ) -> None:
        self.engine = engine
        self.model_name = model_name
        self.max_tokens_cap = max_tokens_cap
        self.default_max_tokens = default_max_tokens
        self.request_timeout = request_timeout
        self.save_every_turn = save_every_turn  # checkpoint owned sessions after each response
        self.queue_timeout = queue_timeout
        self.index = PrefixIndex(max_cached_sessions)
        self.store = ResponseStore(state_dir / "responses.json")
        self.owned: set[str] = set()  # names of sessions saved at shutdown (chains, conversations)
        self.executor = ThreadPoolExecutor(64, thread_name_prefix="agentrt-serve")
        self._probe = engine.model.new_cache(engine.pool, window=engine.window)
        self._streams = self._probe.num_layers * self._probe.num_kv_heads
        self._cond = threading.Condition()
        self._reserved = 0
        self._busy: set[str] = set()  # owned sessions with a request running
        self.stop_ids = ChatFormat(engine.tokenizer).stop_token_ids()
        self.created = int(time.time())

    # -- admission ---------------------------------------------------------------------
    def blocks_for(self, tokens: int) -> int:
        """Upper bound of the pool blocks a session of `tokens` tokens holds (plus CoW copies)."""
        return self._probe.blocks_needed(tokens) + self._streams

    def admit(self, tokens: int) -> int:
        """Reserve the blocks of a request holding `tokens` tokens; wait up to queue_timeout.

        Raises BudgetError (429) when it never fits the pool or the wait runs out.
        """
        need = self.blocks_for(tokens)
        total = self.engine.pool.num_blocks
        if need > total:
            raise BudgetError(
                f"this request needs up to {need} KV blocks ({tokens} tokens) but the pool has "
                f"{total} in all",
                hint="send a shorter conversation or lower max_tokens; the server's --kv-budget sets the pool",
            )
        deadline = time.monotonic() + self.queue_timeout
        with self._cond:
            while self._reserved + need > total:
                left = deadline - time.monotonic()
                if left <= 0 or not self._cond.wait(left):
                    if self._reserved + need <= total:
                        break
                    raise BudgetError(
                        "the KV budget is taken by running requests; retry later",
                        hint=f"waited {self.queue_timeout:.0f} s for {need} KV blocks",
                    )
            self._reserved += need
        return need

    def release(self, blocks: int) -> None:
        """Give back an admission reservation."""
        with self._cond:
            self._reserved -= blocks
            self._cond.notify_all()

    # -- preparing a prompt ------------------------------------------------------------
    def prepare(self, ids: list[int], max_tokens: int, *, index: bool = True) -> Prepared:
        """A fresh session holding `ids`: a fork of the longest indexed prefix, the rest prefilled.

        With `index`, the prompt state is indexed too (a frozen fork) for later requests.
        """
        self.check_length(len(ids), max_tokens)
        blocks = self.admit(len(ids) + max_tokens)
        try:
            entry = self.index.longest(ids)
            child = None
            if entry is not None:
                try:
                    child = self.engine.fork(entry.session)
                    cached, held = entry.cached, len(entry.ids)
                except SessionError:  # evicted and closed meanwhile: start afresh
                    child = None
            if child is None:
                child = self.engine.new_session()
                cached, held = 0, 0
        except BaseException:
            self.release(blocks)
            raise
        try:
            rest = ids[held:]
            if rest:
                child.prefill(rest)
                if index:
                    self.keep(self.engine.fork(child))
        except BaseException:
            self.engine.close_session(child)
            self.release(blocks)
            raise
        return Prepared(child, len(ids), cached, blocks)

    def fork_prepared(self, prep: Prepared, count: int, max_tokens: int) -> list[Prepared]:
        """`count` copy-on-write forks of a prepared session: more choices from one prefill.

        Each fork is admitted for its own new tokens only; the prompt blocks stay shared.
        """
        out: list[Prepared] = []
        try:
            for _ in range(count):
                blocks = self.admit(max_tokens)
                try:
                    child = self.engine.fork(prep.session)
                except BaseException:
                    self.release(blocks)
                    raise
                out.append(Prepared(child, prep.prompt_tokens, prep.prompt_tokens, blocks))
        except BaseException:
            for p in out:
                self.finish(p, keep=False)
            raise
        return out

    def check_length(self, prompt: int, max_tokens: int) -> None:
        """400 when the prompt alone fills the model's positions."""
        limit = self.engine.model.arch.max_positions
        if limit and prompt >= limit:
            raise APIError(
                400,
                f"the prompt has {prompt} tokens; the model holds {limit} positions",
                code="context_length_exceeded",
                param="messages",
            )

    def keep(self, session: Session) -> None:
        """Index a frozen session for prefix reuse (closing what the index evicts)."""
        for old in self.index.add(session, held_ids(session)):
            self.engine.close_session(old)

    def finish(self, prep: Prepared, *, keep: bool) -> None:
        """After generating: index the session (frozen from now on) or close it; free the slot."""
        try:
            s = prep.session
            if not s.closed:
                if keep and s.error is None and s.active is None:
                    self.keep(s)
                else:
                    self.engine.close_session(s)
        finally:
            self.release(prep.blocks)

    # -- response points -----------------------------------------------------------------
    def open_owned(self, name: str) -> Session:
        """An owned session by name: open, or restored from its newest checkpoint."""
        for s in list(self.engine.sessions.values()):
            if s.name == name:
                return s
        try:
            return self.engine.open_session(name)
        except SessionError as err:
            raise not_found("session", name) from err
        finally:
            self.owned.add(name)

    def claim(self, name: str) -> None:
        """Mark an owned session busy (409 when another request runs on it)."""
        with self._cond:
            if name in self._busy:
                raise APIError(
                    409,
                    f"session {name!r} is running another request; wait for it or continue from "
                    "an earlier response (that forks it)",
                    code="session_busy",
                )
            self._busy.add(name)

    def is_busy(self, name: str) -> bool:
        """Whether a request runs on the owned session `name`."""
        with self._cond:
            return name in self._busy

    def unclaim(self, name: str) -> None:
        """Undo `claim`."""
        with self._cond:
            self._busy.discard(name)

    def continue_at(
        self, name: str, position: int, messages: list[Message], new: list[Message], max_tokens: int
    ) -> tuple[Prepared, list[Message], bool]:
        """Append `new` to the owned session `name` at `position` (in place when that is its end,
        else through a copy-on-write fork of the longest indexed prefix); returns the prepared
        session, the full messages and whether it is in place."""
        session = self.open_owned(name)
        fmt = ChatFormat(self.engine.tokenizer)
        ids = held_ids(session)
        if session.position == position and not self.is_busy(name):
            self.claim(name)
            try:
                delta = fmt.delta(ids, messages, new)
                self.check_length(len(ids) + len(delta.ids), max_tokens)
                blocks = self.admit(len(ids) + len(delta.ids) + max_tokens)
                cached = len(session.tokens)
                self.keep(self.engine.fork(session))  # the point stays reachable (CoW)
                try:
                    if delta.ids:
                        session.prefill(delta.ids)
                except BaseException:
                    self.release(blocks)
                    raise
            except BaseException:
                self.unclaim(name)
                raise
            prep = Prepared(session, len(ids) + len(delta.ids), cached, blocks)
            return prep, messages + new, True
        point = ids[:position]
        delta = fmt.delta(point, messages, new)
        return self.prepare(point + delta.ids, max_tokens), messages + new, False

    def autosave(self, session: Session) -> None:
        """With `save_every_turn`, checkpoint an owned session after a response (so another
        server on the same catalog and home can continue it)."""
        if self.save_every_turn and not session.closed and session.dirty:
            if session.error is None and session.active is None:
                self.engine.save(session)

    def new_owned(self, name: str | None) -> Session:
        """A new owned session (saved at shutdown)."""
        name = name or f"resp-{uuid.uuid4().hex[:16]}"
        session = self.engine.new_session(name)
        self.owned.add(name)
        return session

    # -- shutdown ------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Save every owned session, close the rest and the engine."""
        for s in self.index.clear():
            self.engine.close_session(s)
        for s in list(self.engine.sessions.values()):
            if s.name in self.owned and s.dirty and s.active is None and s.error is None:
                try:
                    self.engine.save(s)
                except Exception as err:  # noqa: BLE001 - one bad save must not keep the rest unsaved
                    log.error(
                        "could not save session %s at shutdown: %s", s.name, type(err).__name__
                    )
        self._probe.free()
        self.engine.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
