"""`create_app(engine, ...)`: the FastAPI app — auth, body limits, error bodies, the routes."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from agentrt.errors import AgentRTError
from agentrt.server.errors import APIError, from_agentrt, from_validation, internal
from agentrt.server.service import Service

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)
_END = object()


def create_app(
    engine: Any,
    *,
    model_name: str = "agentrt",
    api_key: str | None = None,
    state_dir: str | Path | None = None,
    max_body_bytes: int = 4 * 1024 * 1024,
    **service_options: Any,
) -> FastAPI:
    """The OpenAI-compatible app serving one engine; closing the app saves every owned session."""
    from contextlib import asynccontextmanager

    if state_dir is None:
        state_dir = engine.persistence.layout.home / "server"
    service = Service(engine, model_name=model_name, state_dir=Path(state_dir), **service_options)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        service.shutdown()

    app = FastAPI(
        title="agentrt", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.service = service
    app.state.max_body_bytes = max_body_bytes

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Any]) -> Any:
        """API key (constant-time compare), then the declared body size."""
        if api_key is not None:
            auth = request.headers.get("authorization", "")
            given = auth[7:] if auth.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(given.encode(), api_key.encode()):
                return error_response(
                    APIError(
                        401,
                        "missing or wrong API key; send Authorization: Bearer <key>",
                        code="invalid_api_key",
                    )
                )
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > max_body_bytes):
            return error_response(_too_large(max_body_bytes))
        try:
            return await call_next(request)
        except APIError as err:
            return error_response(err)

    @app.exception_handler(APIError)
    async def api_error(_r: Request, err: APIError) -> JSONResponse:
        return error_response(err)

    @app.exception_handler(AgentRTError)
    async def agentrt_error(_r: Request, err: AgentRTError) -> JSONResponse:
        return error_response(from_agentrt(err))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_r: Request, err: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if err.status_code == 404 else None
        return error_response(APIError(err.status_code, str(err.detail), code=code))

    @app.exception_handler(Exception)
    async def any_error(_r: Request, err: Exception) -> JSONResponse:
        return error_response(internal(err))

    from agentrt.server import routes_chat, routes_state

    app.include_router(routes_chat.router)
    app.include_router(routes_state.router)
    return app


def error_response(err: APIError) -> JSONResponse:
    """OpenAI's error JSON with the error's status and headers."""
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def _too_large(limit: int) -> APIError:
    return APIError(413, f"request body is larger than {limit} bytes", code="body_too_large")


async def parse_body(request: Request, model: type[M]) -> M:
    """Read the body (size-capped), parse JSON and validate it; OpenAI-style 400s otherwise."""
    limit = request.app.state.max_body_bytes
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    try:
        data = json.loads(b"".join(chunks) or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise APIError(400, f"the body is not valid JSON: {err}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "the body must be a JSON object", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise from_validation(err.errors()) from None


def service_of(request: Request) -> Service:
    """The app's Service."""
    return request.app.state.service


async def run(service: Service, fn: Callable[..., Any], *args: Any) -> Any:
    """Run a blocking engine call in the service's threads."""
    return await asyncio.wrap_future(service.executor.submit(fn, *args))


async def tokens(
    service: Service,
    stream: Any,
    *,
    deadline: float,
    request: Request | None = None,
    on_close: Callable[[], None],
    closed: list[Future[Any]],
) -> AsyncIterator[int]:
    """Token ids of a running TokenStream, each `next` in a worker thread.

    However it ends (done, timeout, client gone, task cancelled), the stream is closed and
    `on_close` runs in a worker after the in-flight step, so the session stays consistent;
    its future lands in `closed` (await it on the normal path before answering).
    """
    inflight: Future[Any] | None = None
    n = 0
    try:
        while True:
            if time.monotonic() > deadline:
                raise APIError(
                    504,
                    "the request ran past the server's timeout",
                    type="server_error",
                    code="timeout",
                )
            if request is not None and n % 8 == 7 and await request.is_disconnected():
                return
            inflight = service.executor.submit(next, stream, _END)
            tok = await asyncio.wrap_future(inflight)
            if tok is _END:
                return
            n += 1
            yield tok
    finally:
        closed.append(service.executor.submit(_close_after, inflight, stream, on_close))


def _close_after(inflight: Future[Any] | None, stream: Any, on_close: Callable[[], None]) -> None:
    if inflight is not None:
        try:
            inflight.result()
        except BaseException:  # noqa: BLE001 - the caller saw it already
            pass
    try:
        stream.close()
    finally:
        on_close()
