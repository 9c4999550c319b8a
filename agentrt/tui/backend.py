"""What the chat UI does to sessions, without any UI: open, new, fork, rename, delete, save.

`ChatBackend` owns the engine, the catalog store and one `Agent` per open session. The
UI calls it from worker threads (loading, asking) and from the event loop (everything
else, refused while an answer is being generated). Messages go to the catalog together
with each checkpoint, so a reopened session shows its history and continues from its KV
cache with no re-prefill. No textual import here: this module is tested on its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agentrt.errors import ConfigError, SessionError

Message = dict[str, Any]
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The current time (UTC, aware): the default clock of the UI."""
    return datetime.now(UTC)


@dataclass
class ChatOptions:
    """What `agentrt chat` was asked for: model, device, state folder, session, prompt, tools."""

    model: str | None = None
    device: str | None = None
    home: str | None = None
    db: str | None = None
    session: str | None = None  # open this saved session
    new: str | None = None  # start a new session with this name
    system: str | None = None
    tools: bool = False
    workspace: Path | None = None  # folder the file tools may read (default: the cwd)
    kv_budget: str = "1GiB"
    kv_dtype: str | None = None  # K/V storage dtype; None: AGENTRT_KV_DTYPE, else auto
    max_new_tokens: int = 512
    temperature: float = 0.0


@dataclass
class SessionEntry:
    """One row of the sidebar: a saved session, an open one, or both."""

    name: str
    tokens: int
    kv_bytes: int
    compression_ratio: float
    last_used: datetime | None
    saved: bool
    open: bool
    dirty: bool = False


@dataclass
class Conversation:
    """An open session with its agent loop and how many of its messages the catalog holds."""

    agent: Any
    saved_messages: int = 0
    opened_at: datetime = field(default_factory=utc_now)

    @property
    def session(self) -> Any:
        """The agent's current session (it changes when the context rolls over)."""
        return self.agent.session

    @property
    def name(self) -> str:
        """The session's name."""
        return self.agent.session.name


def load_engine(options: ChatOptions) -> tuple[Any, Any, Path]:
    """(Engine, SessionStore, home) for the options; the slow part (model load) of the UI's start."""
    from agentrt import Engine
    from agentrt.sessions import SessionStore, open_catalog
    from agentrt.settings import load_settings

    settings = load_settings(home=options.home, db=options.db, device=options.device)
    engine = Engine.from_pretrained(
        options.model or settings.model,
        device=settings.device,
        kv_budget=options.kv_budget,
        kv_dtype=options.kv_dtype,
        home=settings.home,
        db=settings.db_url,
    )
    return engine, SessionStore(open_catalog(settings.db_url)), settings.home


class ChatBackend:
    """Sessions of one engine as the chat UI sees them (one conversation is current)."""

    def __init__(
        self,
        engine: Any,
        store: Any,
        options: ChatOptions | None = None,
        *,
        home: str | Path | None = None,
        clock: Clock = utc_now,
        decoder: Any = None,
    ) -> None:
        """`home`: the engine's state folder; `decoder`: the loop's decode step (None: generate)."""
        self.engine = engine
        self._home = Path(home) if home is not None else None
        self.store = store
        self.options = options or ChatOptions()
        self.clock = clock
        self.decoder = decoder
        self.system = self.options.system
        self.tools_on = self.options.tools
        self.conversations: list[Conversation] = []
        self.current: Conversation | None = None
        self.busy = threading.Event()  # set while an answer is being generated

    # -- helpers ----------------------------------------------------------------------
    @property
    def home(self) -> Path:
        """The state folder (checkpoints live under it)."""
        if self._home is None:
            from agentrt.settings import load_settings

            self._home = load_settings(home=self.options.home).home
        return self._home

    def _check_idle(self, what: str) -> None:
        if self.busy.is_set():
            raise SessionError(
                f"cannot {what} while an answer is being generated",
                hint="wait for it or press Ctrl+C to stop it",
            )

    def _saved(self, name: str) -> Any | None:
        try:
            return self.store.get_session(name)
        except SessionError:
            return None

    def free_name(self, base: str) -> str:
        """`base`, or `base-2`, `base-3`... when a saved or open session has that name."""
        name, n = base, 1
        while self._saved(name) is not None or self.find(name) is not None:
            n += 1
            name = f"{base}-{n}"
        return name

    def _check_new_name(self, name: str) -> str:
        name = name.strip()
        if not name:
            raise ConfigError("a session needs a name", hint="type a name, e.g. notes-2")
        if self._saved(name) is not None or self.find(name) is not None:
            raise SessionError(f"a session named {name!r} already exists", hint="choose another")
        return name

    def find(self, name: str) -> Conversation | None:
        """The open conversation whose session has this name, if any."""
        return next((c for c in self.conversations if c.name == name), None)

    def registry(self) -> Any:
        """The tool registry for new conversations (None when tools are off)."""
        if not self.tools_on:
            return None
        from agentrt.tools import PermissionPolicy, builtin_registry

        return builtin_registry(PermissionPolicy(self.options.workspace or Path.cwd()))

    def tool_names(self) -> list[str]:
        """The built-in tools a conversation gets with tools on."""
        from agentrt.tools import PermissionPolicy, builtin_registry

        return builtin_registry(PermissionPolicy(self.options.workspace or Path.cwd())).names()

    def _agent(self, session: Any, messages: list[Message] | None, callbacks: Any) -> Any:
        from agentrt.agent import Agent, Limits
        from agentrt.engine import SamplingParams

        sampling = SamplingParams(
            max_new_tokens=self.options.max_new_tokens, temperature=self.options.temperature
        )
        return Agent(
            session,
            tools=self.registry(),
            system=self.system,
            sampling=sampling,
            limits=Limits(max_new_tokens=self.options.max_new_tokens),
            callbacks=callbacks,
            decoder=self.decoder,
            messages=messages,
            new_session=lambda old: self.engine.new_session(self.free_name(f"{old.name}-cont")),
        )

    def _add(self, conv: Conversation) -> Conversation:
        self.conversations.append(conv)
        self.current = conv
        return conv

    # -- sessions ---------------------------------------------------------------------
    def entries(self) -> list[SessionEntry]:
        """Open sessions (live numbers) and saved ones (catalog numbers), most recent first."""
        out: dict[str, SessionEntry] = {}
        for info in self.store.list_sessions():
            out[info.name] = SessionEntry(
                info.name,
                info.tokens,
                info.kv_bytes,
                info.compression_ratio,
                info.updated_at,
                saved=True,
                open=False,
            )
        for conv in self.conversations:
            s = conv.session
            st = s.stats()
            prev = out.get(s.name)
            out[s.name] = SessionEntry(
                s.name,
                int(st.get("tokens", len(s.tokens))),
                int(st.get("kv_bytes", 0)),
                float(st.get("compression_ratio", 1.0)),
                prev.last_used if prev is not None and not s.dirty else conv.opened_at,
                saved=s.db_id is not None,
                open=True,
                dirty=s.dirty,
            )
        far = datetime.min.replace(tzinfo=UTC)
        return sorted(out.values(), key=lambda e: (e.last_used or far, e.name), reverse=True)

    def new(self, name: str | None, callbacks: Any) -> Conversation:
        """Start an empty session (a free `chat-N` name when none is given)."""
        self._check_idle("start a session")
        name = self._check_new_name(name) if name else self.free_name("chat")
        session = self.engine.new_session(name)
        return self._add(
            Conversation(self._agent(session, None, callbacks), opened_at=self.clock())
        )

    def open(self, name: str, callbacks: Any) -> Conversation:
        """Switch to a session: an open one as it is, a saved one from its newest checkpoint."""
        conv = self.find(name)
        if conv is not None:
            self.current = conv
            return conv
        self._check_idle("open a session")
        session = self.engine.open_session(name)  # restores the KV cache: no re-prefill
        messages = [self._message(m) for m in self.store.messages(session.db_id)]
        try:
            agent = self._agent(session, messages, callbacks)
        except BaseException:
            session.close()
            raise
        return self._add(Conversation(agent, saved_messages=len(messages), opened_at=self.clock()))

    @staticmethod
    def _message(m: Any) -> Message:
        return {"role": m.role, "content": m.content}

    def fork(self, name: str | None, callbacks: Any) -> Conversation:
        """A new session continuing from the current one (copy-on-write KV blocks)."""
        self._check_idle("fork")
        parent = self._require_current()
        name = self._check_new_name(name) if name else self.free_name(f"{parent.name}-fork")
        child = parent.session.fork(name)
        agent = parent.agent
        messages = [dict(m) for m in agent.messages[: agent.fed_messages]]
        return self._add(
            Conversation(self._agent(child, messages, callbacks), opened_at=self.clock())
        )

    def rename(self, old: str, new: str) -> None:
        """Rename a session (in the catalog when saved, in the engine when open)."""
        self._check_idle("rename")
        new = self._check_new_name(new)
        conv = self.find(old)
        saved = self._saved(old)
        if saved is not None:
            self.store.rename_session(saved, new)
        if conv is not None:
            conv.session.name = new
        if saved is None and conv is None:
            raise SessionError(f"no session named {old!r}")

    def delete(self, name: str) -> int:
        """Close a session and delete its catalog rows and checkpoint files; files removed."""
        self._check_idle("delete")
        conv = self.find(name)
        if conv is not None:
            conv.session.close()
            self.conversations.remove(conv)
            if self.current is conv:
                self.current = None
        saved = self._saved(name)
        if saved is None:
            return 0
        files = self.store.delete_session(saved)
        for file in files:
            (self.home / file).unlink(missing_ok=True)
        folder = self.home / "checkpoints" / saved.id
        (folder / ".lock").unlink(missing_ok=True)
        try:
            folder.rmdir()
        except OSError:
            pass
        return len(files)

    def _require_current(self) -> Conversation:
        if self.current is None:
            raise SessionError("no session is open", hint="start one with /new")
        return self.current

    # -- saving -----------------------------------------------------------------------
    def save(self, conv: Conversation | None = None) -> Any:
        """Checkpoint a session and append the messages its cache now holds to the catalog."""
        self._check_idle("save")
        return self._save(conv or self._require_current())

    def _save(self, conv: Conversation) -> Any:
        info = self.engine.save(conv.session)
        agent = conv.agent
        for m in agent.messages[conv.saved_messages : agent.fed_messages]:
            self.store.add_message(conv.session.db_id, m["role"], m["content"])
        conv.saved_messages = agent.fed_messages
        return info

    def save_all(self) -> list[str]:
        """Save every open session with unsaved tokens (on quit); names saved."""
        done = []
        for conv in self.conversations:
            s = conv.session
            if (s.dirty or conv.saved_messages < conv.agent.fed_messages) and s.error is None:
                self._save(conv)
                done.append(s.name)
        return done

    def checkpoints(self, conv: Conversation | None = None) -> list[Any]:
        """The current session's checkpoints (oldest first); [] before the first save."""
        conv = conv or self.current
        if conv is None or conv.session.db_id is None:
            return []
        return self.store.checkpoints(conv.session.db_id)

    # -- the conversation ---------------------------------------------------------------
    def ask(self, prompt: str) -> Any:
        """Run one input through the current agent (call from a worker thread)."""
        conv = self._require_current()
        self.busy.set()
        try:
            return conv.agent.ask(prompt)
        finally:
            self.busy.clear()

    def stop(self) -> None:
        """Stop the running answer at the next token (thread-safe)."""
        if self.current is not None:
            self.current.agent.stop()

    def set_system(self, text: str, callbacks: Any) -> bool:
        """Set the system prompt; True when it applies to the current (empty) session now."""
        self._check_idle("change the system prompt")
        self.system = text or None
        conv = self.current
        if conv is not None and not conv.session.tokens and conv.session.pending_token is None:
            conv.agent = self._agent(conv.session, None, callbacks)
            return True
        return False

    def set_tools(self, on: bool, callbacks: Any) -> bool:
        """Tools on or off for new sessions; True when it applies to the current (empty) one now."""
        self._check_idle("change tools")
        self.tools_on = on
        conv = self.current
        if conv is not None and not conv.session.tokens and conv.session.pending_token is None:
            conv.agent = self._agent(conv.session, None, callbacks)
            return True
        return False

    def history(self, conv: Conversation | None = None) -> list[Message]:
        """The messages of a conversation (system message included)."""
        conv = conv or self.current
        return [] if conv is None else list(conv.agent.messages)

    def stats(self, conv: Conversation | None = None) -> dict[str, Any]:
        """The session's stats (tokens, KV bytes, dense bytes, per-layer compression) and the pool's."""
        conv = conv or self.current
        pool = self.engine.pool.stats()
        if conv is None:
            return {"pool": pool}
        return {**conv.session.stats(), "pool": pool}

    def close(self) -> None:
        """Close the engine (no autosave here: the UI saves first) and the store."""
        try:
            self.engine.close()
        finally:
            self.store.close()


__all__ = ["ChatBackend", "ChatOptions", "Conversation", "SessionEntry", "load_engine", "utc_now"]
