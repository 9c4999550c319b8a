"""SmolLM2's tool-call format: a JSON list of calls inside one `<tool_call>` tag."""

from __future__ import annotations

from agentrt.tools import ToolCall, ToolCallError, parse_tool_calls


def test_a_list_of_calls_in_one_tag():
    text = '<tool_call>[{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {}}]</tool_call>'
    calls = parse_tool_calls(text)
    assert [(c.name, c.arguments) for c in calls] == [("a", {"x": 1}), ("b", {})]
    assert all(isinstance(c, ToolCall) for c in calls)


def test_an_empty_list_is_no_call_and_bad_items_are_errors():
    assert parse_tool_calls("<tool_call>[]</tool_call>") == []
    (bad,) = parse_tool_calls('<tool_call>[{"arguments": {}}]</tool_call>')
    assert isinstance(bad, ToolCallError) and "no 'name'" in bad.message
