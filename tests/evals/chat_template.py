"""The test tokenizer's chat template: ChatML with Hermes/Qwen tool definitions and a `tool` role.

Rendering of a chat with tools::

    <|im_start|>system
    {system}

    # Tools
    You may call these functions. Call one as <tool_call>{"name": ..., "arguments": {...}}</tool_call>.
    <tools>
    {one JSON schema per line}
    </tools><|im_end|>
    <|im_start|>user
    {user}<|im_end|>
    <|im_start|>assistant
    <tool_call>
    {"name": "calculator", "arguments": {"expression": "1 + 2"}}
    </tool_call><|im_end|>
    <|im_start|>tool
    <tool_response>
    3
    </tool_response><|im_end|>
    <|im_start|>assistant
    Answer: 3<|im_end|>

Assistant messages may also carry OpenAI-style `tool_calls` (rendered in the same format).
"""

from __future__ import annotations

import functools
import json
from typing import Any

TOOLS_HEADER = (
    "# Tools\nYou may call these functions. Call one as "
    '<tool_call>{"name": ..., "arguments": {...}}</tool_call>.\n<tools>'
)

CHAT_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages and messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}"
    "{{- '" + TOOLS_HEADER.replace("\n", "\\n") + "' }}"
    "{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}"
    "{{- '\\n</tools><|im_end|>\\n' }}"
    "{%- elif messages and messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'system' %}"
    "{%- if not loop.first %}{{- '<|im_start|>system\\n' + message.content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- elif message.role == 'tool' %}"
    "{{- '<|im_start|>tool\\n<tool_response>\\n' + message.content + '\\n</tool_response><|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message.role + '\\n' + (message.content or '') }}"
    "{%- if message.role == 'assistant' and message.tool_calls %}"
    "{%- for call in message.tool_calls %}"
    "{%- set f = call.function if call.function is defined else call %}"
    "{%- if (message.content or '') or not loop.first %}{{- '\\n' }}{%- endif %}"
    "{{- '<tool_call>\\n{\"name\": ' + (f.name | tojson) + ', \"arguments\": ' }}"
    "{{- f.arguments if f.arguments is string else (f.arguments | tojson) }}"
    "{{- '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@functools.lru_cache(maxsize=1)
def _compiled() -> Any:
    """The template compiled once, in an environment like transformers' (tojson, trim blocks)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda x: json.dumps(x, ensure_ascii=False)
    return env.from_string(CHAT_TEMPLATE)


def render(
    messages: list[dict[str, Any]],
    tools: list[dict] | None = None,
    *,
    add_generation_prompt: bool = False,
) -> str:
    """Render with jinja2 alone (no tokenizer needed: builds the test tokenizer's corpus)."""
    return _compiled().render(
        messages=messages, tools=tools, add_generation_prompt=add_generation_prompt
    )
