"""The main screen: sidebar, conversation, input, session panel, status bar; runs the agent."""

from __future__ import annotations

import itertools
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Label

from agentrt.errors import AgentRTError
from agentrt.tui.commands import parse_slash
from agentrt.tui.screens.confirm import ConfirmScreen
from agentrt.tui.screens.name import NameScreen
from agentrt.tui.stream import TokenBuffer, UICallbacks
from agentrt.tui.widgets.conversation import ConversationView
from agentrt.tui.widgets.format import human_bytes
from agentrt.tui.widgets.input import ChatInput
from agentrt.tui.widgets.session_panel import SessionPanel
from agentrt.tui.widgets.sidebar import Sidebar
from agentrt.tui.widgets.status_bar import StatusBar

SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
FINISH_NOTES = {
    "interrupted": "stopped (ctrl+c): the partial answer stays in the session",
    "length": "cut at the token limit",
    "context_limit": "the context is full",
}


def error_text(err: BaseException) -> str:
    """`message (hint: ...)` of an AgentRTError, else the exception's text."""
    if isinstance(err, AgentRTError):
        return err.message + (f" (hint: {err.hint})" if err.hint else "")
    return f"{type(err).__name__}: {err}"


class MainScreen(Screen[None]):
    """Everything of a chat; the model loads in the app's worker while this is already shown."""

    BINDINGS = [
        Binding("ctrl+c", "stop", "Stop", priority=True),
        Binding("ctrl+s", "save", "Save"),
        Binding("ctrl+n", "new_session", "New"),
        Binding("ctrl+f", "fork", "Fork"),
        Binding("f2", "rename", "Rename"),
        Binding("delete", "delete", "Delete", show=False),
        Binding("f3", "toggle_panel", "Panel"),
        Binding("ctrl+b", "toggle_sidebar", "Sidebar", show=False),
        Binding("h", "toggle_heads", "Heads", show=False),
    ]

    def __init__(self) -> None:
        super().__init__(id="main")
        self.backend: Any = None
        self.buffer = TokenBuffer(self._timer)
        self.callbacks: UICallbacks | None = None
        self.progress: Label | None = None
        self.asked_at: float | None = None
        self.prefill_estimate = 0
        self._spin = itertools.cycle(SPINNER)

    def _timer(self) -> float:
        return self.app.timer()

    # -- layout ---------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        """Sidebar | conversation over input | session panel; status bar and keys below."""
        with Horizontal(id="body"):
            yield Sidebar(id="sidebar")
            with Vertical(id="chat"):
                yield ConversationView(id="conversation")
                yield ChatInput(id="input")
            yield SessionPanel(id="panel", classes="-hidden")
        yield StatusBar(id="status")
        yield Footer()

    async def on_mount(self) -> None:
        """Say that the model is loading; focus the input."""
        self.progress = await self.conversation.note("loading the model…", classes="progress")
        self.asked_at = self._timer()
        self.set_interval(1 / 15, self._tick)
        self.query_one(ChatInput).focus()

    @property
    def conversation(self) -> ConversationView:
        """The conversation widget."""
        return self.query_one(ConversationView)

    @property
    def status(self) -> StatusBar:
        """The status bar."""
        return self.query_one(StatusBar)

    # -- the backend arrives ----------------------------------------------------------------
    async def ready(self, backend: Any) -> None:
        """The model loaded and the first session is open: show it."""
        self.backend = backend
        model = backend.engine.model
        source = getattr(model, "source_dir", None)
        name = source.name if source is not None else model.arch.model_type
        self.status.set(model=name, device=str(backend.engine.pool.stats()["device"]), state="")
        await self._clear_progress()
        await self.show_current()

    def make_callbacks(self) -> UICallbacks:
        """The agent-loop callbacks of this screen (one object for every session)."""
        if self.callbacks is None:
            self.callbacks = UICallbacks(self.app, self, self.buffer)
        return self.callbacks

    async def show_current(self) -> None:
        """Show the current session's messages and numbers."""
        await self.conversation.show_history(self.backend.history())
        self.refresh_numbers()

    def refresh_numbers(self) -> None:
        """Redraw the sidebar, status bar and (if shown) session panel from live stats."""
        b = self.backend
        if b is None:
            return
        now = self.app.clock()
        current = b.current.name if b.current is not None else None
        self.query_one(Sidebar).show(b.entries(), current, now)
        st = b.stats()
        pool = st["pool"]
        self.status.set(
            kv_bytes=int(st.get("kv_bytes", 0)),
            dense_bytes=int(st.get("dense_bytes", 0)),
            compression_ratio=st.get("compression_ratio") if st.get("tokens") else None,
            pool_used=pool["num_used"] / pool["num_blocks"] if pool["num_blocks"] else None,
        )
        panel = self.query_one(SessionPanel)
        if not panel.has_class("-hidden") and b.current is not None:
            panel.show(current, st, b.checkpoints(), now)

    # -- sending ----------------------------------------------------------------------------
    @on(ChatInput.Submitted)
    async def _submitted(self, event: ChatInput.Submitted) -> None:
        try:
            command = parse_slash(event.text)
        except AgentRTError as err:
            self.notify(error_text(err), severity="error")
            return
        if command is not None:
            await self.run_command(command.name, command.arg)
            return
        text = event.text[1:] if event.text.startswith("//") else event.text
        await self.send(text)

    async def send(self, text: str) -> None:
        """Show the user's message and ask the agent in a worker."""
        if self.backend is None:
            self.notify("the model is still loading", severity="warning")
            return
        if self.backend.busy.is_set():
            self.notify("an answer is still coming (ctrl+c stops it)", severity="warning")
            return
        if self.backend.current is None:
            self.notify("no session is open: /new starts one", severity="warning")
            return
        await self.conversation.add_user(text)
        tokenizer = self.backend.engine.tokenizer
        self.prefill_estimate = len(tokenizer.encode(text, add_special_tokens=False))
        self.buffer.reset()
        self.asked_at = self._timer()
        self.progress = await self.conversation.note(self._progress_text(), classes="progress")
        self.status.set(state="generating")
        self.backend.busy.set()  # before the worker starts: no second send in between
        self.ask(text)

    def _progress_text(self) -> str:
        elapsed = self._timer() - self.asked_at if self.asked_at is not None else 0.0
        if self.backend is None:
            return f"{next(self._spin)} loading the model… {elapsed:.0f} s"
        return f"{next(self._spin)} prefilling ~{self.prefill_estimate} tokens… {elapsed:.1f} s"

    @work(thread=True, exclusive=True, group="ask")
    def ask(self, text: str) -> None:
        """Run the input through the agent loop (worker thread)."""
        try:
            result = self.backend.ask(text)
        except Exception as err:  # noqa: BLE001 - shown to the user, the app stays up
            self.app.call_from_thread(self.failed, err)
            return
        self.app.call_from_thread(self.answered, result)

    async def _tick(self) -> None:
        """Timer: spin the progress line, render buffered tokens."""
        if self.progress is not None and self.buffer.first_at is None:
            self.progress.update(self._progress_text())
        text = self.buffer.take()
        if text:
            await self._clear_progress()
            await self.conversation.stream(text)

    async def _clear_progress(self) -> None:
        if self.progress is not None:
            progress, self.progress = self.progress, None
            await progress.remove()

    # -- called from the worker (through call_from_thread) -----------------------------------
    async def prefilled(self, tokens: int, how: str) -> None:
        """The new messages are in the cache; generation starts."""
        if self.progress is not None:
            self.prefill_estimate = tokens
            self.progress.update(f"prefilled {tokens} tokens ({how}); generating…")

    async def turn_ended(self, text: str, finish: str) -> None:
        """Render what is left of the turn, then its final text."""
        rest = self.buffer.take()
        if rest:
            await self._clear_progress()
            await self.conversation.stream(rest)
        await self.conversation.end_turn(text, FINISH_NOTES.get(finish))
        rate = self.buffer.rate()
        if rate is not None:
            self.status.set(tokens_per_s=rate)

    async def tool_called(self, name: str | None, arguments: dict, error: str | None) -> None:
        """A tool block for the call."""
        await self.conversation.add_tool(name, arguments, error)

    async def tool_finished(self, result: str | None, error: str | None) -> None:
        """The call's result."""
        self.conversation.tool_result(result, error)
        self.buffer.reset()

    async def rolled_over(self, old: str, new: str) -> None:
        """The context was full: the conversation continues in another session."""
        await self.conversation.note(f"context full: {old} continues as {new} from a summary")

    async def answered(self, result: Any) -> None:
        """The input is done: notes for limits, numbers refreshed."""
        await self._clear_progress()
        if result.finish_reason == "interrupted" and not result.answer:
            await self.conversation.end_turn("", FINISH_NOTES["interrupted"])
        elif result.message and result.finish_reason != "interrupted":
            await self.conversation.note(result.message, classes="warning")
        self.status.set(state="")
        self.refresh_numbers()
        if getattr(self.app, "quit_after_answer", False):
            self.app.action_quit_app()

    async def failed(self, err: BaseException) -> None:
        """The input failed: show why (the session may be unusable; see the message)."""
        await self._clear_progress()
        await self.conversation.end_turn("", None)
        await self.conversation.note(error_text(err), classes="error")
        self.status.set(state="error")
        self.refresh_numbers()

    async def load_failed(self, err: BaseException) -> None:
        """Opening the first session failed after the model loaded."""
        await self._clear_progress()
        await self.conversation.note(error_text(err), classes="error")

    # -- actions ----------------------------------------------------------------------------
    def action_stop(self) -> None:
        """Ctrl+C: stop the answer at the next token."""
        if self.backend is not None and self.backend.busy.is_set():
            self.backend.stop()
            self.status.set(state="stopping…")
        else:
            self.notify("nothing to stop (ctrl+q quits)")

    def _guard(self) -> bool:
        if self.backend is None:
            self.notify("the model is still loading", severity="warning")
            return False
        if self.backend.busy.is_set():
            self.notify("wait for the answer or press ctrl+c", severity="warning")
            return False
        return True

    async def _do(self, fn: Any, *args: Any) -> Any:
        """Run a backend call; show an AgentRTError as a notification."""
        try:
            return fn(*args)
        except AgentRTError as err:
            self.notify(error_text(err), severity="error")
            return None

    async def action_save(self) -> None:
        """Checkpoint the current session and its messages."""
        if not self._guard():
            return
        info = await self._do(self.backend.save)
        if info is not None:
            self.notify(
                f"saved {self.backend.current.name}: {info.tokens} tokens, "
                f"{human_bytes(info.size_bytes)}"
            )
            self.refresh_numbers()

    def action_new_session(self) -> None:
        """Ask for a name, then start an empty session."""
        if self._guard():
            self.app.push_screen(
                NameScreen("New session name:", self.backend.free_name("chat")), self._new_named
            )

    async def _new_named(self, name: str | None) -> None:
        if name is not None:
            await self.new_session(name)

    async def new_session(self, name: str | None) -> None:
        """Start an empty session and show it."""
        if self._guard() and await self._do(self.backend.new, name, self.make_callbacks()):
            await self.show_current()

    def action_fork(self) -> None:
        """Ask for a name, then fork the current session."""
        if self._guard() and self.backend.current is not None:
            default = self.backend.free_name(f"{self.backend.current.name}-fork")
            self.app.push_screen(NameScreen("Fork into:", default), self._fork_named)

    async def _fork_named(self, name: str | None) -> None:
        if name is not None:
            await self.fork(name)

    async def fork(self, name: str | None) -> None:
        """Fork the current session into `name` and switch to the fork."""
        if self._guard() and await self._do(self.backend.fork, name, self.make_callbacks()):
            await self.show_current()
            self.notify(f"forked into {self.backend.current.name}")

    def _target(self) -> str | None:
        """The session the sidebar highlights when it has focus, else the current one."""
        sidebar = self.query_one(Sidebar)
        if sidebar.has_focus_within and sidebar.highlighted_name:
            return sidebar.highlighted_name
        return self.backend.current.name if self.backend.current is not None else None

    def action_rename(self) -> None:
        """Ask for a new name for the session."""
        if not self._guard() or (old := self._target()) is None:
            return

        async def renamed(new: str | None) -> None:
            if new and new != old and await self._do(self.backend.rename, old, new) is None:
                self.refresh_numbers()

        self.app.push_screen(NameScreen(f"Rename {old!r} to:", old), renamed)

    def action_delete(self) -> None:
        """Ask, then delete the session with its checkpoints."""
        if not self._guard() or (name := self._target()) is None:
            return

        async def answered(yes: bool | None) -> None:
            if yes:
                await self.delete(name)

        self.app.push_screen(
            ConfirmScreen(f"Delete session {name!r} and its checkpoints?"), answered
        )

    async def delete(self, name: str) -> None:
        """Delete a session; if it was the current one, switch to another (or a new one)."""
        was_current = self.backend.current is not None and self.backend.current.name == name
        if await self._do(self.backend.delete, name) is None:
            return
        self.notify(f"deleted {name}")
        if was_current:
            others = self.backend.conversations
            if others:
                self.backend.current = others[-1]
            else:
                await self._do(self.backend.new, None, self.make_callbacks())
            await self.show_current()
        else:
            self.refresh_numbers()

    @on(Sidebar.Selected)
    async def _selected(self, event: Sidebar.Selected) -> None:
        if self.backend is None or (
            self.backend.current is not None and event.name == self.backend.current.name
        ):
            return
        if self._guard():
            await self.switch_to(event.name)

    async def switch_to(self, name: str) -> None:
        """Make `name` current (restoring it from its checkpoint when it is not open)."""
        self.progress = await self.conversation.note(f"opening {name}…", classes="progress")
        self.open_worker(name)

    @work(thread=True, exclusive=True, group="open")
    def open_worker(self, name: str) -> None:
        """Restore a saved session off the UI thread."""
        try:
            self.backend.open(name, self.make_callbacks())
        except Exception as err:  # noqa: BLE001 - shown to the user
            self.app.call_from_thread(self.load_failed, err)
            return
        self.app.call_from_thread(self._opened)

    async def _opened(self) -> None:
        await self._clear_progress()
        await self.show_current()
        self.query_one(ChatInput).focus()

    def action_toggle_panel(self) -> None:
        """Show or hide the session panel."""
        self.query_one(SessionPanel).toggle_class("-hidden")
        self.refresh_numbers()

    def action_toggle_sidebar(self) -> None:
        """Show or hide the sidebar."""
        self.query_one(Sidebar).toggle_class("-hidden")

    def action_toggle_heads(self) -> None:
        """Session panel: compression per head or per layer."""
        panel = self.query_one(SessionPanel)
        panel.per_head = not panel.per_head
        self.refresh_numbers()

    @on(SessionPanel.SaveRequested)
    async def _save_requested(self) -> None:
        await self.action_save()

    # -- slash commands ---------------------------------------------------------------------
    async def run_command(self, name: str, arg: str) -> None:
        """Run a parsed slash command."""
        if name == "help":
            self.app.action_help()
            return
        if not self._guard():
            return
        if name == "save":
            await self.action_save()
        elif name == "fork":
            await self.fork(arg or None)
        elif name == "new":
            await self.new_session(arg or None)
        elif name == "system":
            now = await self._do(self.backend.set_system, arg, self.make_callbacks())
            if now is not None:
                await self.conversation.note(
                    "system prompt set for this session"
                    if now
                    else "system prompt set for new sessions (this one's is already in its cache)"
                )
                if now:
                    await self.show_current()
        elif name == "tools":
            await self._tools(arg)
        elif name == "stats":
            await self.conversation.note(self.stats_text())

    async def _tools(self, arg: str) -> None:
        if arg in ("on", "off"):
            now = await self._do(self.backend.set_tools, arg == "on", self.make_callbacks())
            if now is not None:
                where = "this session" if now else "new sessions"
                await self.conversation.note(f"tools {arg} for {where}")
                if now:
                    await self.show_current()
            return
        names = ", ".join(self.backend.tool_names())
        state = "on" if self.backend.tools_on else "off"
        await self.conversation.note(f"tools ({state} for new sessions): {names}; /tools on|off")

    def stats_text(self) -> str:
        """The /stats line."""
        st = self.backend.stats()
        if "tokens" not in st:
            return "no session"
        pool = st["pool"]
        return (
            f"{st['name']}: {st['tokens']} tokens in {st['slots']} slots, "
            f"KV {human_bytes(st['kv_bytes'])} (dense {human_bytes(st['dense_bytes'])}), "
            f"CR {st['compression_ratio']:.2f}, prefilled {st['prefill_tokens']}, "
            f"decoded {st['decode_tokens']}; pool {pool['num_used']}/{pool['num_blocks']} blocks"
        )
