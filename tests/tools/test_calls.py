"""parse_tool_calls: Hermes/Qwen tags and Llama 3.1 JSON."""

from __future__ import annotations

from agentrt.tools import ToolCall, ToolCallError, parse_tool_calls


def test_hermes_single() -> None:
    text = 'Let me check.\n<tool_call>\n{"name": "read_file", "arguments": {"path": "a.txt"}}\n</tool_call>'
    (call,) = parse_tool_calls(text)
    assert isinstance(call, ToolCall)
    assert (call.name, call.arguments) == ("read_file", {"path": "a.txt"})
    assert call.raw == '{"name": "read_file", "arguments": {"path": "a.txt"}}'


def test_hermes_several_and_string_arguments() -> None:
    text = (
        '<tool_call>{"name": "calculator", "arguments": {"expression": "1+1"}}</tool_call>\n'
        '<tool_call>{"name": "list_dir", "arguments": "{\\"path\\": \\"src\\"}"}</tool_call>'
        '<tool_call>{"name": "list_dir"}</tool_call>'
    )
    calls = parse_tool_calls(text)
    assert [(c.name, c.arguments) for c in calls if isinstance(c, ToolCall)] == [
        ("calculator", {"expression": "1+1"}),
        ("list_dir", {"path": "src"}),
        ("list_dir", {}),
    ]


def test_hermes_malformed_is_an_error_object_and_others_survive() -> None:
    text = (
        '<tool_call>{"name": "calculator", "arguments": {"expression": 1+}</tool_call>'
        '<tool_call>{"name": "list_dir", "arguments": {}}</tool_call>'
        '<tool_call>["not", "an", "object"]</tool_call>'
        '<tool_call>{"arguments": {}}</tool_call>'
        '<tool_call>{"name": "x", "arguments": [1]}</tool_call>'
    )
    calls = parse_tool_calls(text)
    assert [type(c).__name__ for c in calls] == [
        "ToolCallError",
        "ToolCall",
        "ToolCallError",
        "ToolCallError",
        "ToolCallError",
    ]
    assert "not valid JSON" in calls[0].message
    assert calls[0].raw.startswith('{"name": "calculator"')
    assert "no 'name'" in calls[3].message
    assert calls[4].name == "x" and "JSON object" in calls[4].message


def test_hermes_unclosed_last_tag() -> None:
    (call,) = parse_tool_calls('<tool_call>{"name": "list_dir", "arguments": {"path": "."}}')
    assert isinstance(call, ToolCall) and call.arguments == {"path": "."}


def test_llama_json_whole_message() -> None:
    (call,) = parse_tool_calls('{"name": "calculator", "parameters": {"expression": "2*3"}}')
    assert isinstance(call, ToolCall)
    assert (call.name, call.arguments) == ("calculator", {"expression": "2*3"})


def test_llama_python_tag_and_end_token() -> None:
    text = '<|python_tag|>{"name": "list_dir", "parameters": {"path": "docs"}}<|eom_id|>'
    (call,) = parse_tool_calls(text)
    assert isinstance(call, ToolCall) and call.arguments == {"path": "docs"}


def test_llama_malformed() -> None:
    (err,) = parse_tool_calls('<|python_tag|>{"name": "list_dir", "parameters": {')
    assert isinstance(err, ToolCallError) and "not valid JSON" in err.message
    (err2,) = parse_tool_calls('{"name": "calculator", "parameters": {"expression": }')
    assert isinstance(err2, ToolCallError)


def test_plain_text_has_no_calls() -> None:
    assert parse_tool_calls("The answer is 42.") == []
    assert parse_tool_calls('{"answer": 42}') == []
    assert parse_tool_calls("") == []


def test_repr_hides_argument_values() -> None:
    (call,) = parse_tool_calls(
        '{"name": "write_file", "parameters": {"path": "a", "content": "secret"}}'
    )
    assert "secret" not in repr(call) and "content" in repr(call)
