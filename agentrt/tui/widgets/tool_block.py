"""A tool call and its result as a collapsible block."""

from __future__ import annotations

import json
from typing import Any

from textual.widgets import Collapsible, Static

RESULT_PREVIEW = 4000  # characters of a result shown in the block


def call_title(name: str | None, arguments: dict[str, Any], state: str) -> str:
    """'⚙ calculator(expression="6*7") …' with the state mark (…, ✓, ✗)."""
    args = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in arguments.items())
    if len(args) > 60:
        args = args[:59] + "…"
    return f"⚙ {name or '?'}({args}) {state}"


class ToolBlock(Collapsible):
    """Collapsed: the call and its state; expanded: the arguments and the result or error."""

    def __init__(
        self, name: str | None, arguments: dict[str, Any], error: str | None = None
    ) -> None:
        self.tool_name = name
        self.arguments = arguments
        self.result_view = Static("running…", classes="tool-result", markup=False)
        args = json.dumps(arguments, ensure_ascii=False, indent=2) if arguments else "{}"
        super().__init__(
            Static(args, classes="tool-args", markup=False),
            self.result_view,
            title=call_title(name, arguments, "…"),
            collapsed=True,
            classes="tool-block",
        )
        if error is not None:
            self.set_result(None, error)

    def set_result(self, result: str | None, error: str | None) -> None:
        """Show the result (or the error) and mark the title ✓ or ✗."""
        ok = error is None
        text = result if ok else f"error: {error}"
        text = text or ""
        if len(text) > RESULT_PREVIEW:
            text = text[:RESULT_PREVIEW] + f"\n[{len(text) - RESULT_PREVIEW} more characters]"
        self.result_view.update(text)
        self.title = call_title(self.tool_name, self.arguments, "✓" if ok else "✗")
        self.set_class(not ok, "-error")
