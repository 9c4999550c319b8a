"""Slash commands typed in the prompt box: parsing only (the main screen runs them)."""

from __future__ import annotations

from dataclasses import dataclass

from agentrt.errors import ConfigError

COMMANDS = {
    "save": "save the session now",
    "fork": "fork into a new session: /fork NAME",
    "new": "start a new session: /new [NAME]",
    "system": "set the system prompt: /system TEXT",
    "tools": "list the tools, or /tools on|off",
    "stats": "the session's numbers",
    "help": "keys and commands",
}


@dataclass(frozen=True)
class SlashCommand:
    """A parsed `/name argument`."""

    name: str
    arg: str


def parse_slash(text: str) -> SlashCommand | None:
    """`/fork notes` -> SlashCommand('fork', 'notes'); None for text that is not a command.

    `//text` sends `/text` as a message. Unknown commands raise ConfigError listing the known.
    """
    if not text.startswith("/") or text.startswith("//"):
        return None
    name, _, arg = text[1:].partition(" ")
    name = name.strip().lower()
    if name not in COMMANDS:
        known = ", ".join(f"/{c}" for c in COMMANDS)
        raise ConfigError(f"unknown command /{name}", hint=f"commands: {known} (// sends a /)")
    return SlashCommand(name, arg.strip())
