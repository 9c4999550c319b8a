"""The conversation: messages and tool blocks in a scrolling column, streamed into as they come."""

from __future__ import annotations

from typing import Any

from textual.containers import VerticalScroll
from textual.widgets import Label

from agentrt.tui.widgets.message import MessageView
from agentrt.tui.widgets.tool_block import ToolBlock


class ConversationView(VerticalScroll):
    """Shows one session's messages; the live assistant turn streams into `self.live`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.live: MessageView | None = None  # the assistant turn being streamed
        self.tools: list[ToolBlock] = []

    async def show_history(self, messages: list[dict[str, Any]]) -> None:
        """Replace the view with these messages (the system message is shown as a note)."""
        await self.remove_children()
        self.live = None
        self.tools = []
        widgets: list[Any] = []
        for m in messages:
            if m["role"] == "tool":
                block = ToolBlock(m.get("name"), {})
                block.set_result(m["content"], None)
                widgets.append(block)
            elif m["role"] == "system":
                widgets.append(Label(f"system: {m['content']}", classes="system-note"))
            elif m["role"] == "assistant" and not m["content"]:
                continue  # an empty turn left by a stop before the reply
            else:
                widgets.append(MessageView(m["role"], m["content"]))
        if widgets:
            await self.mount_all(widgets)
        self.scroll_end(animate=False)

    async def add_user(self, text: str) -> None:
        """A message the user sent."""
        await self.mount(MessageView("user", text))
        self.scroll_end(animate=False)

    async def note(self, text: str, classes: str = "note") -> Label:
        """A one-line note in the conversation (progress, stop, errors)."""
        label = Label(text, classes=classes)
        await self.mount(label)
        self.scroll_end(animate=False)
        return label

    async def stream(self, text: str) -> None:
        """Streamed assistant text: starts the live message if there is none, renders it now."""
        if self.live is None:
            self.live = MessageView("assistant")
            await self.mount(self.live)
        self.live.append(text)
        if await self.live.flush():
            self.scroll_end(animate=False)

    async def end_turn(self, text: str, note: str | None) -> MessageView | None:
        """The live assistant turn is over: render its final text (and a note)."""
        live, self.live = self.live, None
        if live is None and (text or note):
            live = MessageView("assistant")
            await self.mount(live)
        if live is not None:
            await live.finish(text, note)
            self.scroll_end(animate=False)
        return live

    async def add_tool(self, name: str | None, arguments: dict, error: str | None) -> ToolBlock:
        """A tool call the model made (its result comes with `tool_result`)."""
        block = ToolBlock(name, arguments, error)
        self.tools.append(block)
        await self.mount(block)
        self.scroll_end(animate=False)
        return block

    def tool_result(self, result: str | None, error: str | None) -> None:
        """The result of the newest tool call still running."""
        if self.tools:
            self.tools[-1].set_result(result, error)
