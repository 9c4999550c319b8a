"""agentrt.tools: agent tools from typed functions, their JSON schemas, a permission policy, built-ins."""

from agentrt.tools.builtin import builtin_registry, calculator, confine
from agentrt.tools.calls import ParsedCall, ToolCall, ToolCallError, parse_tool_calls
from agentrt.tools.policy import PermissionPolicy
from agentrt.tools.registry import Tool, ToolRegistry, tool
from agentrt.tools.sandbox import SandboxLimits, run_python
from agentrt.tools.schema import tool_schema

__all__ = [
    "ParsedCall",
    "PermissionPolicy",
    "SandboxLimits",
    "Tool",
    "ToolCall",
    "ToolCallError",
    "ToolRegistry",
    "builtin_registry",
    "calculator",
    "confine",
    "parse_tool_calls",
    "run_python",
    "tool",
    "tool_schema",
]
