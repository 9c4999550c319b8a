"""The prefix index: frozen sessions by the token ids they hold, to reuse the longest prefix.

Each entry is a session nobody writes to again (a copy-on-write fork point). A request
forks the entry holding the longest prefix of its prompt and prefills only the rest.
Entries are keyed by their first block of ids, so a lookup compares only candidates that
share it; least recently used entries are closed beyond `max_entries`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agentrt.engine import Session

KEY_TOKENS = 16


@dataclass
class Entry:
    """A frozen session and the ids it holds (fed tokens plus a sampled token not fed yet)."""

    session: Session
    ids: tuple[int, ...]

    @property
    def cached(self) -> int:
        """Tokens whose KV the session holds (the pending token is not fed yet)."""
        return len(self.session.tokens)


class PrefixIndex:
    """Frozen sessions by token-id prefix; LRU-bounded (evicted sessions are closed)."""

    def __init__(self, max_entries: int = 32) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, Entry] = OrderedDict()  # session id -> entry, LRU order
        self._by_key: dict[tuple[int, ...], set[str]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def sessions(self) -> set[str]:
        """Ids of the indexed sessions."""
        with self._lock:
            return set(self._entries)

    def longest(self, ids: list[int]) -> Entry | None:
        """The entry whose ids are the longest prefix of `ids` (marked recently used)."""
        key = tuple(ids[:KEY_TOKENS])
        with self._lock:
            best: Entry | None = None
            # entries of at least KEY_TOKENS ids share the key; shorter ones sit under ()
            for sid in self._by_key.get(key, set()) | self._by_key.get((), set()):
                e = self._entries[sid]
                n = len(e.ids)
                if n <= len(ids) and (best is None or n > len(best.ids)) and not e.session.closed:
                    if tuple(ids[:n]) == e.ids:
                        best = e
            if best is not None:
                self._entries.move_to_end(best.session.id)
            return best

    def add(self, session: Session, ids: list[int]) -> list[Session]:
        """Index a frozen session; returns the sessions evicted (the caller closes them)."""
        entry = Entry(session, tuple(ids))
        key = tuple(ids[:KEY_TOKENS]) if len(ids) >= KEY_TOKENS else ()
        with self._lock:
            dup = [
                sid for sid in self._by_key.get(key, set()) if self._entries[sid].ids == entry.ids
            ]
            if dup:  # the same ids are indexed already: keep the older one
                return [session]
            self._entries[session.id] = entry
            self._by_key.setdefault(key, set()).add(session.id)
            evicted = []
            while len(self._entries) > self.max_entries:
                sid, old = self._entries.popitem(last=False)
                self._unkey(sid, old)
                evicted.append(old.session)
            return evicted

    def remove(self, session_id: str) -> Entry | None:
        """Forget one session (when it is deleted); returns its entry."""
        with self._lock:
            e = self._entries.pop(session_id, None)
            if e is not None:
                self._unkey(session_id, e)
            return e

    def clear(self) -> list[Session]:
        """Forget every entry; returns their sessions (the caller closes them)."""
        with self._lock:
            out = [e.session for e in self._entries.values()]
            self._entries.clear()
            self._by_key.clear()
            return out

    def _unkey(self, sid: str, e: Entry) -> None:
        key = e.ids[:KEY_TOKENS] if len(e.ids) >= KEY_TOKENS else ()
        group = self._by_key.get(key)
        if group is not None:
            group.discard(sid)
            if not group:
                del self._by_key[key]
