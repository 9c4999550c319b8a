"""The `agentrt` command line: one click group, one module per command group."""

from __future__ import annotations

from agentrt.cli.main import cli, main

__all__ = ["cli", "main"]
