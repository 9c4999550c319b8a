"""`agentrt serve --ray`: a small affinity proxy in front of replicas that each run the full app.

Each replica (`AppReplica`, a Ray actor) serves the ordinary agentrt HTTP app on its own
Engine; this proxy, on the user's host and port, forwards every request to one of them:

- `/v1/responses` with `previous_response_id` or `conversation` goes to the replica that
  produced that response (or holds that conversation), learnt from the response bodies it
  forwarded; a new chain goes to the replica with the fewest requests in flight. When that
  replica is gone, the request goes to another, which reopens the session from its newest
  checkpoint (replicas share the catalog, the checkpoints and the response index).
- `/v1/chat/completions` is stateless: it goes to the replica picked by a hash of the first
  two messages (rendezvous hashing), so conversations that re-send their history land where
  their prefix is cached; when that replica has `SPILL` more requests in flight than the
  least loaded one, the least loaded one gets it instead.
- `/v1/sessions/{id}...` goes to the replica known to hold the session, else to each replica
  in turn until one knows it; `GET /v1/sessions` merges every replica's list.
- `/v1/models` goes to any replica.

Streams pass through chunk by chunk. API key, body limits and error bodies stay the
replicas' job. A request whose replica died before answering goes to the next replica;
the proxy answers 503 (retryable, with Retry-After) when a replica fails a request while Ray
still reports it alive, and when no replica is left. See docs/SERVER.md and docs/SCALE_OUT.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from agentrt.server.errors import RETRY_AFTER_S, APIError

log = logging.getLogger(__name__)

SPILL = 4  # in-flight requests by which the affine replica may exceed the least loaded one
_HOP = {"content-length", "transfer-encoding", "connection", "keep-alive", "host", "date", "server"}


@dataclass
class Backend:
    """One replica as the proxy sees it: its URL, actor handle and requests in flight."""

    name: str
    url: str
    handle: Any = None  # the Ray actor (None in programs that run replicas themselves)
    inflight: int = 0
    alive: bool = True


class Pool:
    """The replicas behind the proxy and which one holds which response and session."""

    def __init__(self, backends: list[Backend], probe: Callable[[Backend], bool] | None = None):
        self.backends = {b.name: b for b in backends}
        self.responses: dict[str, str] = {}  # response id -> replica name
        self.sessions: dict[str, str] = {}  # session / conversation name -> replica name
        self.probe = probe  # True when a replica that refused a connection is still alive

    def live(self) -> list[Backend]:
        """Live replicas, least loaded first (start order on a tie)."""
        return sorted((b for b in self.backends.values() if b.alive), key=lambda b: b.inflight)

    def order(self, first: str | None = None) -> list[Backend]:
        """Live replicas to try: `first` (when live) then the least loaded."""
        live = self.live()
        head = [b for b in live if b.name == first]
        return head + [b for b in live if b.name != first]

    def affine(self, key: bytes) -> list[Backend]:
        """Rendezvous-hash `key` onto a replica, unless it is SPILL requests busier."""
        live = self.live()
        if not live:
            return []
        best = max(live, key=lambda b: hashlib.sha256(b.name.encode() + key).digest())
        if best.inflight - live[0].inflight >= SPILL:
            best = live[0]
        return self.order(best.name)

    def mark_dead(self, backend: Backend) -> None:
        """Stop sending to a replica and forget what it held (others reopen it from the store)."""
        backend.alive = False
        for table in (self.responses, self.sessions):
            for key in [k for k, v in table.items() if v == backend.name]:
                del table[key]
        log.warning("replica %s is unreachable; its sessions continue on others", backend.name)

    def learn(self, backend: Backend, body: dict[str, Any]) -> None:
        """Record the response id and session a replica answered with."""
        if body.get("object") == "response":
            self.responses[body["id"]] = backend.name
            if body.get("session"):
                self.sessions[body["session"]] = backend.name
        elif body.get("object") == "session":
            self.sessions[body["id"]] = backend.name
        elif body.get("object") == "session.deleted":
            self.sessions.pop(body["id"], None)


def unavailable(why: str) -> JSONResponse:
    """503 in OpenAI's error format with Retry-After: the request may be sent again."""
    err = APIError(
        503,
        f"no replica could serve the request ({why}); retry",
        type="server_error",
        code="replica_unavailable",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )
    return JSONResponse(err.body(), status_code=503, headers=err.headers)


def create_proxy(
    pool: Pool,
    *,
    timeout: float = 630.0,
    max_body_bytes: int = 4 * 1024 * 1024,
    on_shutdown: Callable[[], None] | None = None,
) -> FastAPI:
    """The proxy app forwarding the agentrt HTTP API to the replicas of `pool`."""
    client: dict[str, httpx.AsyncClient] = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        client["c"] = httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=10.0))
        try:
            yield
        finally:
            await client["c"].aclose()
            if on_shutdown is not None:
                await asyncio.to_thread(on_shutdown)

    app = FastAPI(title="agentrt", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.pool = pool

    async def read_body(request: Request) -> bytes | None:
        """The body, or None past the replicas' own limit (they would refuse it too)."""
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    async def forward(
        request: Request, order: list[Backend], body: bytes, *, stream: bool = False
    ) -> Response:
        """Send the request to the first reachable replica of `order`."""
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        for backend in order:
            req = client["c"].build_request(
                request.method, backend.url + path, headers=headers, content=body
            )
            backend.inflight += 1
            try:
                resp = await client["c"].send(req, stream=True)
            except httpx.ConnectError:  # nothing was sent: another replica may take it
                backend.inflight -= 1
                if not await _still_alive(pool, backend):
                    pool.mark_dead(backend)
                    continue
                return unavailable(f"replica {backend.name} refused the connection")
            except httpx.TransportError as err:
                backend.inflight -= 1
                if not await _still_alive(pool, backend):
                    # it died before answering (often on a kept-alive connection): nothing
                    # came back, so the request goes to the next replica
                    pool.mark_dead(backend)
                    continue
                return unavailable(f"replica {backend.name}: {type(err).__name__}")
            out = {k: v for k, v in resp.headers.items() if k.lower() not in _HOP}
            out["x-agentrt-replica"] = backend.name
            if stream and resp.status_code == 200:
                return StreamingResponse(
                    _relay(resp, backend), status_code=200, headers=out, media_type=None
                )
            try:
                content = await resp.aread()
            except httpx.TransportError as err:
                if not await _still_alive(pool, backend):
                    pool.mark_dead(backend)
                return unavailable(f"replica {backend.name}: {type(err).__name__}")
            finally:
                backend.inflight -= 1
                await resp.aclose()
            if resp.status_code == 200 and "json" in resp.headers.get("content-type", ""):
                try:
                    pool.learn(backend, json.loads(content))
                except (ValueError, KeyError, TypeError, AttributeError):
                    pass
            return Response(content, status_code=resp.status_code, headers=out)
        return unavailable("every replica is gone")

    async def _relay(resp: httpx.Response, backend: Backend) -> AsyncIterator[bytes]:
        try:
            async for chunk in resp.aiter_raw():
                yield chunk
        finally:
            backend.inflight -= 1
            await resp.aclose()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        """Stateless chat: prefix affinity by the first two messages, spilling on load."""
        body = await read_body(request)
        if body is None:
            return _too_large(max_body_bytes)
        data = _json(body)
        key = json.dumps(data.get("messages", [])[:2], sort_keys=True).encode()
        return await forward(request, pool.affine(key), body, stream=bool(data.get("stream")))

    @app.post("/v1/responses")
    async def responses(request: Request) -> Response:
        """Continuations go to the replica that holds their session."""
        body = await read_body(request)
        if body is None:
            return _too_large(max_body_bytes)
        data = _json(body)
        conv = data.get("conversation")
        conv = conv.get("id") if isinstance(conv, dict) else conv
        prev = data.get("previous_response_id")
        holder = pool.responses.get(prev) if isinstance(prev, str) else None
        if holder is None and isinstance(conv, str):
            holder = pool.sessions.get(conv)
        return await forward(request, pool.order(holder), body)

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        """The model list of any replica (they serve the same model)."""
        return await forward(request, pool.order(), b"")

    @app.get("/v1/sessions")
    async def list_sessions(request: Request) -> Response:
        """Every replica's open sessions, each with the replica that holds it."""
        data: list[dict[str, Any]] = []
        for backend in pool.live():
            resp = await forward(request, [backend], b"")
            if resp.status_code == 503 and not backend.alive:
                continue  # died meanwhile: its sessions are no longer open anywhere
            if resp.status_code != 200:
                return resp
            for row in json.loads(bytes(resp.body))["data"]:
                data.append({**row, "replica": backend.name})
        return JSONResponse({"object": "list", "data": data})

    @app.api_route("/v1/sessions/{sid}", methods=["GET", "DELETE"])
    @app.post("/v1/sessions/{sid}/fork")
    @app.post("/v1/sessions/{sid}/save")
    async def one_session(request: Request, sid: str) -> Response:
        """The replica known to hold `sid`, else each replica until one knows it."""
        body = await read_body(request)
        if body is None:
            return _too_large(max_body_bytes)
        holder = pool.sessions.get(sid)
        if holder is not None:
            return await forward(request, pool.order(holder), body)
        resp: Response = unavailable("every replica is gone")
        for backend in pool.live():
            resp = await forward(request, [backend], body)
            if resp.status_code != 404:
                if resp.status_code == 200:
                    pool.sessions.setdefault(sid, backend.name)
                return resp
        return resp

    return app


def _json(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or {} (the replica answers malformed bodies itself)."""
    try:
        data = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _too_large(limit: int) -> JSONResponse:
    err = APIError(413, f"request body is larger than {limit} bytes", code="body_too_large")
    return JSONResponse(err.body(), status_code=413)


async def _still_alive(pool: Pool, backend: Backend) -> bool:
    """Whether a replica that failed a request is still alive (asks Ray when it can)."""
    if pool.probe is None:
        return False
    return await asyncio.to_thread(pool.probe, backend)


# -- starting replicas on Ray ----------------------------------------------------------------
def ray_probe(backend: Backend) -> bool:
    """Ping a replica actor (5 s); False when Ray says it is dead or it does not answer."""
    import ray

    try:
        ray.get(backend.handle.ping.remote(), timeout=5)
    except (ray.exceptions.RayError, TimeoutError):
        return False
    return True


def start_replicas(config: Any, options: dict[str, Any]) -> list[Backend]:
    """Start `config.replicas` AppReplica actors (ClusterConfig) and wait for their URLs."""
    from agentrt.cluster import actor

    actor.connect(config)
    host = "127.0.0.1" if config.address in (None, "local") else None
    handles = {
        name: actor.start_app_replica(name, config, options, host)
        for name in config.replica_names()
    }
    backends = []
    try:
        for name, handle in handles.items():
            backends.append(Backend(name, actor.call(handle, "url"), handle))
    except BaseException:
        for handle in handles.values():
            actor.kill(handle)
        raise
    return backends


def stop_replicas(backends: list[Backend]) -> None:
    """Stop every live replica's app (it saves its owned sessions), then its actor."""
    from agentrt.cluster import actor

    for b in backends:
        if b.handle is None:
            continue
        try:
            actor.call(b.handle, "stop")
        except Exception as err:  # noqa: BLE001 - a dead replica has nothing left to save
            log.warning("replica %s did not stop cleanly: %s", b.name, type(err).__name__)
        actor.kill(b.handle)


def proxy_on_ray(config: Any, options: dict[str, Any], **proxy_options: Any) -> FastAPI:
    """Start the replicas of `config` (ClusterConfig) and the proxy app in front of them;
    closing the app stops the replicas."""
    backends = start_replicas(config, options)
    pool = Pool(backends, probe=ray_probe)
    return create_proxy(pool, on_shutdown=lambda: stop_replicas(backends), **proxy_options)
