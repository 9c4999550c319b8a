"""`agentrt serve`: an OpenAI-compatible HTTP API whose conversations are persistent KV sessions.

FastAPI and uvicorn load only here (`create_app`), never from the engine or the agent loop.
See docs/SERVER.md.
"""

from __future__ import annotations

from typing import Any


def create_app(engine: Any, **kwargs: Any) -> Any:
    """The FastAPI app serving `engine` (see agentrt.server.app.create_app)."""
    from agentrt.server.app import create_app as _create

    return _create(engine, **kwargs)


__all__ = ["create_app"]
