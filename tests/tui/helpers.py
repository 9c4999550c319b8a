"""A tiny chat model on disk and the app built around it, for the Pilot and snapshot tests."""

from __future__ import annotations

import asyncio
import functools
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agentrt.tui.app import ChatApp, make_app
from agentrt.tui.backend import ChatOptions

SIZE = (120, 36)
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
ANSWER = "Hello! Here is **bold** text and a list:\n\n- one\n- two"


class StepTimer:
    """A monotonic clock that advances 0.5 s per reading (tokens/s become deterministic)."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        self.t += 0.5
        return self.t


def replay(texts: list[str]) -> Any:
    """A decode step that feeds these answers (in turn) through the real session."""
    state = {"i": 0}

    def decode(session: Any, params: Any) -> Any:
        tok = session.engine.tokenizer
        text = texts[state["i"] % len(texts)]
        state["i"] += 1
        ids = tok.encode(text, add_special_tokens=False) + [tok.convert_tokens_to_ids("<|im_end|>")]
        ids = ids[: params.max_new_tokens]
        session.prefill(ids)
        return iter(ids)

    return decode


def run_async(fn: Any) -> Any:
    """Run an async test function in a fresh event loop (no pytest async plugin needed)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return asyncio.run(fn(*args, **kwargs))

    return wrapper


def options(model: Path, **kwargs: Any) -> ChatOptions:
    """Chat options for the tiny model on the CPU with a small pool."""
    base = {"model": str(model), "device": "cpu", "kv_budget": "16MiB", "max_new_tokens": 128}
    return ChatOptions(**{**base, **kwargs})


def app_for(model: Path, *, decoder: Any = None, **kwargs: Any) -> ChatApp:
    """The app with a fixed clock and a stepping timer."""
    return make_app(options(model, **kwargs), clock=lambda: NOW, timer=StepTimer(), decoder=decoder)


async def wait_for(pilot: Any, check: Any, timeout: float = 30.0) -> None:
    """Pause the pilot until `check()` is true (AssertionError after `timeout` seconds)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not check():
        if loop.time() > end:
            raise AssertionError("timed out waiting for the app")
        await pilot.pause(0.05)


async def ready(pilot: Any) -> None:
    """Wait until the model loaded and the first session is shown."""
    app = pilot.app
    await wait_for(pilot, lambda: app.main.backend is not None or app.screen is not app.main)
    await pilot.pause()


def idle(app: ChatApp) -> bool:
    """No answer is being generated and no worker is running."""
    return not app.main.backend.busy.is_set() and not any(
        w.is_running for w in app.workers if w.group in ("ask", "open")
    )


async def send(pilot: Any, text: str) -> None:
    """Type a message, press Enter, wait for the answer."""
    app = pilot.app
    app.main.query_one("#input").focus()
    app.main.query_one("#input").load_text(text)
    await pilot.press("enter")
    await pilot.pause()
    await wait_for(pilot, lambda: idle(app))
    await pilot.pause(0.1)
