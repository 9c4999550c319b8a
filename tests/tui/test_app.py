"""Pilot tests of `agentrt chat` on a tiny random-weight model (real engine, real catalog)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentrt.tui.screens.error import ErrorScreen
from agentrt.tui.widgets.message import MessageView
from agentrt.tui.widgets.sidebar import Sidebar
from tests.agent.helpers import save_chat_model
from tests.tui.helpers import ANSWER, SIZE, app_for, ready, replay, run_async, send, wait_for


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny chat model saved once as an HF folder."""
    return save_chat_model(tmp_path_factory.mktemp("tui") / "model")


def _assistant_texts(app) -> list[str]:
    return [m.text for m in app.main.query(MessageView) if m.role == "assistant"]


@run_async
async def test_send_streams_an_answer(model_dir: Path) -> None:
    app = app_for(model_dir, new="first", max_new_tokens=24)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        backend = app.main.backend
        assert backend.current.name == "first"
        await send(pilot, "What is the access code?")
        agent = backend.current.agent
        reply = agent.messages[-1]
        assert reply["role"] == "assistant"
        assert agent.session.position > 0 and len(agent.ids) == agent.session.position
        assert _assistant_texts(app) == [reply["content"]]
        assert app.main.buffer.tokens > 0  # the answer came as a stream of pieces
        assert app.main.status.status.tokens_per_s is not None


@run_async
async def test_markdown_answer_and_slash_stats(model_dir: Path) -> None:
    app = app_for(model_dir, decoder=replay([ANSWER]))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "Say hello")
        assert _assistant_texts(app) == [ANSWER]
        await send(pilot, "/stats")
        notes = [str(label.render()) for label in app.main.query(".note")]
        assert any("tokens in" in n and "CR" in n for n in notes), notes
        box = app.main.query_one("#input")
        box.focus()
        await pilot.press("up")
        assert box.text == "/stats"
        await pilot.press("up")
        assert box.text == "Say hello"
        await pilot.press("down")
        assert box.text == "/stats"
        await pilot.press("ctrl+j")  # a new line, not a send
        assert box.text.count("\n") == 1 and box.text.replace("\n", "") == "/stats"


@run_async
async def test_fork_and_switch_sessions(model_dir: Path) -> None:
    app = app_for(model_dir, new="main", decoder=replay(["Alpha.", "Beta.", "Gamma."]))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        backend = app.main.backend
        await send(pilot, "one")
        await send(pilot, "/fork side")
        assert backend.current.name == "side"
        side = backend.current
        parent = backend.find("main")
        assert side.session.tokens == parent.session.tokens  # the fork holds the parent's cache
        await send(pilot, "two")
        assert _assistant_texts(app) == ["Alpha.", "Beta."]
        assert len(side.session.tokens) > len(parent.session.tokens)
        names = [e.name for e in app.main.query_one(Sidebar).entries]
        assert set(names) == {"main", "side"}
        app.main.query_one(Sidebar).post_message(Sidebar.Selected("main"))
        await wait_for(pilot, lambda: backend.current.name == "main")
        await pilot.pause(0.2)
        assert _assistant_texts(app) == ["Alpha."]


@run_async
async def test_resume_in_a_new_app_without_prefill(model_dir: Path) -> None:
    app = app_for(model_dir, new="keep", decoder=replay(["First answer."]))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "remember 7341")
        held = list(app.main.backend.current.session.tokens)
        await pilot.press("ctrl+q")  # autosaves, then quits
    assert app.return_code == 0 and app.saved_on_quit == ["keep"]

    again = app_for(model_dir, session="keep", decoder=replay(["Second answer."]))
    async with again.run_test(size=SIZE) as pilot:
        await ready(pilot)
        backend = again.main.backend
        session = backend.current.session
        assert session.tokens == held
        assert session.counters["prefill_tokens"] == 0  # restored from the checkpoint
        assert _assistant_texts(again) == ["First answer."]  # history from the catalog
        await send(pilot, "what did I ask?")
        agent = backend.current.agent
        assert agent.render_counts["full"] == 0  # only the new turn was prefilled
        assert _assistant_texts(again) == ["First answer.", "Second answer."]
        assert session.tokens[: len(held)] == held


def slow(decode_delay: float):
    """The real generation, slowed down so that Ctrl+C lands mid-answer."""
    import time

    from agentrt.agent import generate_decoder

    def decode(session, params):
        for token in generate_decoder(session, params):
            time.sleep(decode_delay)
            yield token

    return decode


@run_async
async def test_ctrl_c_stops_and_keeps_the_session_consistent(model_dir: Path) -> None:
    app = app_for(model_dir, decoder=slow(0.05), max_new_tokens=400)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        backend = app.main.backend
        app.main.query_one("#input").load_text("talk for a long time")
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.main.buffer.tokens >= 3)
        await pilot.press("ctrl+c")
        await wait_for(pilot, lambda: not backend.busy.is_set())
        await pilot.pause(0.2)
        agent = backend.current.agent
        partial = agent.messages[-1]["content"]
        assert agent.messages[-1]["role"] == "assistant"
        agent._check_cache()  # the cache holds exactly the tokens the loop fed
        assert _assistant_texts(app)[-1] == partial
        assert app.main.buffer.tokens < 400
        notes = [str(label.render()) for label in app.main.query(".note")]
        assert any("stopped" in n for n in notes), notes
        # the session goes on: the next input is a delta on the same cache
        before = agent.session.position
        app.main.query_one("#input").load_text("and now?")
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.main.buffer.tokens >= 1)
        await pilot.press("ctrl+c")
        await wait_for(pilot, lambda: not backend.busy.is_set())
        assert agent.session.position > before
        agent._check_cache()


@run_async
async def test_failing_model_load_shows_the_error_screen(tmp_path: Path) -> None:
    app = app_for(tmp_path / "no-such-model")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ErrorScreen))
        screen = app.screen
        assert "did not load" in str(screen.query_one("#error-title").render())
        assert "no-such-model" in str(screen.query_one("#error-message").render())
        await pilot.press("q")
    assert app.return_code == 0 or app.return_code is None


@run_async
async def test_rename_and_delete_with_confirmation(model_dir: Path) -> None:
    from textual.widgets import Input, OptionList

    from agentrt.tui.screens.confirm import ConfirmScreen
    from agentrt.tui.screens.name import NameScreen

    app = app_for(model_dir, new="old", decoder=replay(["A."]))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        backend = app.main.backend
        await send(pilot, "hi")
        await send(pilot, "/save")
        saved = backend.store.get_session("old")
        files = [backend.home / c.file for c in backend.store.checkpoints(saved)]
        assert files and all(f.is_file() for f in files)
        assert [m.role for m in backend.store.messages(saved)] == ["user", "assistant"]

        await pilot.press("f2")
        await wait_for(pilot, lambda: isinstance(app.screen, NameScreen))
        app.screen.query_one(Input).value = "renamed"
        await pilot.press("enter")
        await wait_for(pilot, lambda: backend.current.name == "renamed")
        assert backend.store.get_session("renamed").id == saved.id

        await send(pilot, "/new other")
        assert backend.current.name == "other"
        options = app.main.query_one("#session-list", OptionList)
        options.focus()
        names = [e.name for e in app.main.query_one(Sidebar).entries]
        options.highlighted = names.index("renamed")
        await pilot.press("delete")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("n")  # no: nothing happens
        await pilot.pause(0.1)
        assert backend.store.get_session("renamed").id == saved.id
        await pilot.press("delete")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_for(pilot, lambda: backend.find("renamed") is None)
        await pilot.pause(0.1)
        assert [e.name for e in app.main.query_one(Sidebar).entries] == ["other"]
        assert not any(f.exists() for f in files)
        assert backend.current.name == "other"


@run_async
async def test_tool_calls_show_as_collapsible_blocks(model_dir: Path, tmp_path: Path) -> None:
    from agentrt.tui.widgets.tool_block import ToolBlock

    call = '<tool_call>[{"name": "calculator", "arguments": {"expression": "6 * 7"}}]</tool_call>'
    app = app_for(model_dir, tools=True, workspace=tmp_path, decoder=replay([call, "It is 42."]))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "what is 6 * 7?")
        blocks = list(app.main.query(ToolBlock))
        assert len(blocks) == 1
        block = blocks[0]
        assert block.collapsed and "calculator" in block.title and block.title.endswith("✓")
        assert "42" in str(block.result_view.render())
        assert _assistant_texts(app)[-1] == "It is 42."
        messages = app.main.backend.current.agent.messages
        assert [m["role"] for m in messages[-4:]] == ["user", "assistant", "tool", "assistant"]


@run_async
async def test_window_shows_before_the_model_has_loaded(model_dir: Path) -> None:
    import threading

    from agentrt.tui.backend import load_engine
    from tests.tui.helpers import NOW, StepTimer, options

    gate = threading.Event()

    def slow_load(opts):
        assert gate.wait(30), "the test never opened the gate"
        return load_engine(opts)

    from agentrt.tui.app import make_app

    app = make_app(options(model_dir), load=slow_load, clock=lambda: NOW, timer=StepTimer())
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.2)
        assert app.screen is app.main and app.main.backend is None
        progress = [str(label.render()) for label in app.main.query(".progress")]
        assert progress and "loading the model" in progress[0]
        await send_while_loading(pilot)
        gate.set()
        await ready(pilot)
        assert app.main.backend.current.name == "chat"
        assert not list(app.main.query(".progress"))


async def send_while_loading(pilot) -> None:
    """Enter before the model is there: a notice, nothing is sent."""
    pilot.app.main.query_one("#input").load_text("too early")
    await pilot.press("enter")
    await pilot.pause(0.1)
    assert not list(pilot.app.main.query(MessageView))
