"""`ChatApp`: the window first, the model in a worker, then the main screen takes over.

Build it with `make_app(options)`; tests pass `load` (how engine + store are made),
`clock` (wall time for ages), `timer` (monotonic, for tokens/s) and the loop's `decoder`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from agentrt.errors import AgentRTError
from agentrt.tui.backend import ChatBackend, ChatOptions, Clock, load_engine, utc_now
from agentrt.tui.screens.error import ErrorScreen
from agentrt.tui.screens.help import HelpScreen
from agentrt.tui.screens.main import MainScreen, error_text

Loader = Callable[[ChatOptions], tuple[Any, Any, Any]]


class ChatApp(App[int]):
    """The `agentrt chat` application."""

    CSS_PATH = "styles/app.tcss"
    TITLE = "agentrt chat"
    BINDINGS = [
        Binding("ctrl+q", "quit_app", "Quit", priority=True),
        Binding("f1", "help", "Help"),
    ]

    def __init__(
        self,
        options: ChatOptions,
        *,
        load: Loader = load_engine,
        clock: Clock = utc_now,
        timer: Callable[[], float] = time.monotonic,
        decoder: Any = None,
    ) -> None:
        super().__init__()
        self.options = options
        self.load = load
        self.clock = clock
        self.timer = timer
        self.decoder = decoder
        self.backend: ChatBackend | None = None
        self.main = MainScreen()
        self.quit_after_answer = False
        self._unsaved_quit = False
        self.load_error: BaseException | None = None  # why the model or session did not open
        self.saved_on_quit: list[str] = []

    def on_mount(self) -> None:
        """Show the main screen at once; load the model in a worker."""
        self.push_screen(self.main)
        self.load_model()

    @work(thread=True, exclusive=True, group="load")
    def load_model(self) -> None:
        """Load the engine and open the first session (worker thread)."""
        try:
            engine, store, home = self.load(self.options)
        except Exception as err:  # noqa: BLE001 - every load failure becomes the error screen
            self.call_from_thread(self.show_error, "the model did not load", err)
            return
        backend = ChatBackend(
            engine, store, self.options, home=home, clock=self.clock, decoder=self.decoder
        )
        self.backend = backend
        callbacks = self.main.make_callbacks()
        try:
            if self.options.session:
                backend.open(self.options.session, callbacks)
            else:
                backend.new(self.options.new, callbacks)
        except AgentRTError as err:
            self.call_from_thread(self.show_error, "the session did not open", err)
            return
        self.call_from_thread(self.main.ready, backend)

    def show_error(self, title: str, err: BaseException) -> None:
        """Replace everything with the error screen (message and hint, no traceback)."""
        if isinstance(err, AgentRTError):
            screen = ErrorScreen(f"{title}: {err.title}", err.message, err.hint)
        else:
            screen = ErrorScreen(title, error_text(err), "run with -v for a traceback")
        self.load_error = err
        if self.screen is self.main:
            self.switch_screen(screen)
        else:
            self.push_screen(screen)

    def action_help(self) -> None:
        """F1: keys and commands."""
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_quit_app(self) -> None:
        """Ctrl+Q: stop a running answer, save every session with news, quit."""
        backend = self.backend
        if backend is None or self._unsaved_quit:
            self.exit(0)
            return
        if backend.busy.is_set():
            self.quit_after_answer = True
            backend.stop()
            return
        try:
            saved = backend.save_all()
        except AgentRTError as err:
            self._unsaved_quit = True
            self.notify(
                f"could not save: {error_text(err)}; ctrl+q again quits without saving",
                severity="error",
                timeout=10,
            )
            return
        self.saved_on_quit = saved
        self.exit(0)

    def on_unmount(self) -> None:
        """Close the engine and the catalog."""
        if self.backend is not None:
            self.backend.close()

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """The command palette: session actions, then textual's own."""
        main = self.main
        yield SystemCommand("New session", "Start an empty session", main.action_new_session)
        yield SystemCommand("Fork session", "Continue this session in a copy", main.action_fork)
        yield SystemCommand("Rename session", "Give the session a new name", main.action_rename)
        yield SystemCommand("Delete session", "Delete it and its checkpoints", main.action_delete)
        yield SystemCommand("Save session", "Checkpoint the session now", main.action_save)
        yield SystemCommand(
            "Session panel", "Compression and checkpoints", main.action_toggle_panel
        )
        yield SystemCommand("Help", "Keys and slash commands", self.action_help)
        yield from super().get_system_commands(screen)


def make_app(options: ChatOptions | None = None, **kwargs: Any) -> ChatApp:
    """The chat app for these options (kwargs: load, clock, timer, decoder)."""
    return ChatApp(options or ChatOptions(), **kwargs)


__all__ = ["ChatApp", "make_app"]
