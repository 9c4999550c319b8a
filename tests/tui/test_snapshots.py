"""Snapshots (pytest-textual-snapshot) of the main screen, the session panel and the help screen.

The answer is replayed through the real session (deterministic text, tokens and KV numbers),
the clock is fixed, and the tokens/s figure (a wall-time rate) is masked to a fixed value.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agentrt.tui.widgets.session_panel import SessionPanel
from tests.agent.helpers import save_chat_model
from tests.tui.helpers import ANSWER, SIZE, app_for, ready, replay, send


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny chat model saved once as an HF folder (under a fixed folder name)."""
    return save_chat_model(tmp_path_factory.mktemp("snap") / "tiny-chat")


async def _steady(pilot) -> None:
    """Wait for the model and stop the input's cursor from blinking (a timer in the picture)."""
    await ready(pilot)
    pilot.app.main.query_one("#input").cursor_blink = False


async def _one_answer(pilot) -> None:
    await _steady(pilot)
    await send(pilot, "Say hello in Markdown")
    pilot.app.main.status.set(tokens_per_s=42.0)  # mask: a wall-time rate
    await pilot.pause(0.2)


def test_main_screen(model_dir: Path, snap_compare) -> None:
    app = app_for(model_dir, new="demo", decoder=replay([ANSWER]))
    assert snap_compare(app, terminal_size=SIZE, run_before=_one_answer)


def test_session_panel(model_dir: Path, snap_compare) -> None:
    async def open_panel(pilot) -> None:
        await _one_answer(pilot)
        await pilot.press("f3")
        await pilot.pause(0.2)
        assert not pilot.app.main.query_one(SessionPanel).has_class("-hidden")

    app = app_for(model_dir, new="demo", decoder=replay([ANSWER]))
    assert snap_compare(app, terminal_size=SIZE, run_before=open_panel)


def test_help_screen(model_dir: Path, snap_compare) -> None:
    async def open_help(pilot) -> None:
        await _steady(pilot)
        await pilot.press("f1")
        await pilot.pause(0.2)
        assert type(pilot.app.screen).__name__ == "HelpScreen"

    app = app_for(model_dir, new="demo", decoder=replay([ANSWER]))
    assert snap_compare(app, terminal_size=SIZE, run_before=open_help)
