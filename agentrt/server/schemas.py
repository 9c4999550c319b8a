"""Request bodies of the OpenAI-compatible routes (pydantic; unknown fields are rejected)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    """One text part of a message's content list."""

    type: Literal["text", "input_text", "output_text"]
    text: str
    annotations: list[Any] | None = None


class FunctionCall(_Strict):
    """The function of an assistant message's tool call (arguments as a JSON string)."""

    name: str
    arguments: str


class ToolCallIn(_Strict):
    """A tool call of an earlier assistant message, as the client sends it back."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Strict):
    """One chat message: system, developer, user, assistant (maybe with tool calls) or tool."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None


class FunctionDef(_Strict):
    """A tool's function: name, description and JSON-schema parameters."""

    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDef(_Strict):
    """A tool the model may call."""

    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Strict):
    """The function a named tool_choice forces."""

    name: str


class NamedToolChoice(_Strict):
    """`{"type": "function", "function": {"name": ...}}`."""

    type: Literal["function"]
    function: NamedFunction


class StreamOptions(_Strict):
    """Streaming options: a last chunk with usage."""

    include_usage: bool = False


class ChatCompletionRequest(_Strict):
    """POST /v1/chat/completions."""

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=8)
    stop: str | list[str] | None = None
    tools: list[ToolDef] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    user: str | None = None


class InputMessage(_Strict):
    """One input item of /v1/responses: a message."""

    type: Literal["message"] = "message"
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]


class ConversationRef(_Strict):
    """`{"id": name}` form of the conversation parameter."""

    id: str = Field(min_length=1, max_length=128)


class ResponseRequest(_Strict):
    """POST /v1/responses (non-streaming)."""

    model: str
    input: str | list[InputMessage]
    instructions: str | None = None
    previous_response_id: str | None = None
    conversation: str | ConversationRef | None = None
    store: bool = True
    stream: bool = False
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    metadata: dict[str, str] | None = None
    user: str | None = None


class ForkRequest(_Strict):
    """POST /v1/sessions/{id}/fork."""

    name: str | None = Field(default=None, min_length=1, max_length=128)
