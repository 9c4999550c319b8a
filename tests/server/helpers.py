"""A live `agentrt serve` app on a tiny chat model, in a uvicorn thread on a free loopback port."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from agentrt import Engine
from tests.agent.helpers import chat_model

MODEL = "tiny-chat"


def make_engine(home: Path, *, num_blocks: int = 4000) -> Engine:
    """An engine on the tiny smollm2-template model (same weights every time: seed 0)."""
    return Engine(
        chat_model("smollm2"),
        num_blocks=num_blocks,
        block_size=8,
        home=home,
        db=f"sqlite:///{home / 'a.db'}",
    )


class LiveServer:
    """uvicorn serving `create_app(engine, ...)` until `stop()` (bounded waits both ways)."""

    def __init__(self, engine: Engine, **options: Any) -> None:
        import uvicorn

        from agentrt.server import create_app

        self.engine = engine
        self.app = create_app(engine, model_name=MODEL, **options)
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def client(self, api_key: str = "unused", **kw: Any) -> Any:
        """The official openai client on this server."""
        import openai

        return openai.OpenAI(
            base_url=self.url + "/v1", api_key=api_key, max_retries=0, timeout=60, **kw
        )

    def stop(self) -> None:
        """Shut down (the app saves its owned sessions and closes the engine)."""
        self.server.should_exit = True
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the test server did not stop"
