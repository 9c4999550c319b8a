"""`AppReplica`: one Engine behind the full agentrt HTTP app, under uvicorn, in a Ray actor.

`agentrt serve --ray` starts one per replica; the front process's proxy
(`agentrt.cluster.serve_proxy`) forwards requests to their URLs. Every replica builds its
Engine on the same catalog and agentrt home, so the response index
(`HOME/server/responses.json`) and the checkpoints are shared, and every stored response is
checkpointed before it is answered: a chain started on one replica continues on another.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from agentrt.cluster.config import ReplicaConfig
from agentrt.cluster.replica import _build_engine
from agentrt.errors import ConfigError

log = logging.getLogger(__name__)


class AppReplica:
    """One replica of `agentrt serve --ray`: its Engine, the app and a uvicorn thread."""

    def __init__(
        self, name: str, config: ReplicaConfig, options: dict[str, Any], host: str | None = None
    ) -> None:
        import uvicorn

        from agentrt.server import create_app

        if config.store is not None:
            raise ConfigError(
                "serve --ray needs one agentrt home that every replica mounts; a checkpoint "
                "store URL is not supported for the server",
                hint="put AGENTRT_HOME on a shared filesystem (NFS) for every machine",
            )
        self.name = name
        engine = _build_engine(config, Path(config.home))
        app = create_app(engine, save_every_turn=True, **options)
        host = host or _node_ip()
        self.server = uvicorn.Server(
            uvicorn.Config(app, host=host, port=0, log_level="warning", lifespan="on")
        )
        self.thread = threading.Thread(target=self.server.run, name="agentrt-app", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise ConfigError(f"replica {name}: the HTTP app did not start on {host}")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.address = f"http://{host}:{port}"

    def url(self) -> str:
        """The base URL of this replica's app (http://host:port)."""
        return self.address

    def ping(self) -> str:
        """The replica's name (a liveness probe)."""
        return self.name

    def stop(self) -> None:
        """Stop serving; the app's shutdown saves every owned session and closes the engine."""
        self.server.should_exit = True
        self.thread.join(timeout=60)
        if self.thread.is_alive():
            log.error("replica %s: the HTTP app did not stop within 60 s", self.name)


def _node_ip() -> str:
    """This Ray node's IP address (where the proxy can reach the app)."""
    import ray

    return ray.util.get_node_ip_address()
