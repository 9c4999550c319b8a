"""/v1/models, /v1/responses (response points in sessions) and agentrt's /v1/sessions routes."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from fastapi import APIRouter, Request

from agentrt.agent.chat import ChatFormat, Message
from agentrt.engine import SamplingParams
from agentrt.errors import SessionError
from agentrt.server.app import parse_body, run, service_of, tokens
from agentrt.server.errors import APIError, not_found
from agentrt.server.routes_chat import content_text
from agentrt.server.schemas import ForkRequest, ResponseRequest
from agentrt.server.service import Prepared, Service, held_ids

router = APIRouter()


@router.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    """The one served model."""
    svc = service_of(request)
    return {
        "object": "list",
        "data": [
            {"id": svc.model_name, "object": "model", "created": svc.created, "owned_by": "agentrt"}
        ],
    }


def _input_messages(body: ResponseRequest, first: bool) -> list[Message]:
    new: list[Message] = []
    if body.instructions and first:
        new.append({"role": "system", "content": body.instructions})
    if isinstance(body.input, str):
        new.append({"role": "user", "content": body.input})
    else:
        for m in body.input:
            role = "system" if m.role == "developer" else m.role
            new.append({"role": role, "content": content_text(m.content)})
    if not new:
        raise APIError(400, "input is empty", param="input")
    return new


def _start(
    svc: Service, body: ResponseRequest, max_tokens: int
) -> tuple[Prepared, str | None, list[Message], int]:
    """Prepare the session of a response: (prepared, owned session name or None, messages, start)."""
    conv = body.conversation.id if hasattr(body.conversation, "id") else body.conversation
    if body.previous_response_id is not None and conv is not None:
        raise APIError(
            400, "give previous_response_id or conversation, not both", param="conversation"
        )
    point: dict[str, Any] | None = None
    if body.previous_response_id is not None:
        point = svc.store.get("responses", body.previous_response_id)
        if point is None:
            raise not_found("response", body.previous_response_id)
    elif conv is not None:
        point = svc.store.get("conversations", conv)
    if point is None:  # a new chain (or conversation): an owned session holding the prompt
        new = _input_messages(body, True)
        fmt = ChatFormat(svc.engine.tokenizer)
        ids = fmt.prompt(new, add_generation_prompt=True).ids
        if not body.store:
            return svc.prepare(ids, max_tokens), None, new, 0
        svc.check_length(len(ids), max_tokens)
        blocks = svc.admit(len(ids) + max_tokens)
        try:
            session = svc.new_owned(conv)
        except SessionError as err:
            svc.release(blocks)
            raise APIError(
                409, f"conversation {conv!r} is open but was not started here: {err.message}"
            ) from None
        svc.claim(session.name)
        try:
            session.prefill(ids)
        except BaseException:
            svc.unclaim(session.name)
            svc.release(blocks)
            raise
        return Prepared(session, len(ids), 0, blocks), session.name, new, 0
    new = _input_messages(body, False)
    name = point["session"]
    if body.store:
        prep, messages, in_place = svc.continue_at(
            name, point["position"], point["messages"], new, max_tokens
        )
        if not in_place:  # a branch: its own owned session, so the new response is a point too
            prep = _own(svc, prep)
        return prep, prep.session.name, messages, len(point["messages"])
    session = svc.open_owned(name)
    fmt = ChatFormat(svc.engine.tokenizer)
    base = held_ids(session)[: point["position"]]
    delta = fmt.delta(base, point["messages"], new)
    return svc.prepare(base + delta.ids, max_tokens), None, point["messages"] + new, 0


def _own(svc: Service, prep: Prepared) -> Prepared:
    """Move a prepared request session into a new owned, uniquely named session (CoW fork)."""
    try:
        owned = svc.engine.fork(prep.session, f"resp-{uuid.uuid4().hex[:16]}")
    except BaseException:
        svc.finish(prep, keep=False)
        raise
    svc.engine.close_session(prep.session)
    svc.owned.add(owned.name)
    svc.claim(owned.name)
    return Prepared(owned, prep.prompt_tokens, prep.cached_tokens, prep.blocks)


@router.post("/v1/responses")
async def responses(request: Request) -> dict[str, Any]:
    """OpenAI Responses: each stored response is a point in a session; continuing appends to it."""
    svc = service_of(request)
    body = await parse_body(request, ResponseRequest)
    if body.stream:
        raise APIError(
            400,
            "streaming is not supported on /v1/responses; use /v1/chat/completions",
            param="stream",
        )
    max_tokens = body.max_output_tokens or svc.default_max_tokens
    if max_tokens > svc.max_tokens_cap:
        raise APIError(
            400, f"max_output_tokens is capped at {svc.max_tokens_cap}", param="max_output_tokens"
        )
    prep, owned, messages, _ = await run(svc, _start, svc, body, max_tokens)
    params = SamplingParams(
        max_new_tokens=max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        stop_token_ids=tuple(sorted(svc.stop_ids)),
    )
    ids: list[int] = []
    closed: list[Any] = []

    def on_close() -> None:
        if owned is not None:
            try:
                svc.autosave(prep.session)
            finally:
                svc.unclaim(owned)
                svc.release(prep.blocks)
        else:
            svc.finish(prep, keep=False)

    try:
        stream = await run(svc, lambda: prep.session.generate(params=params))
    except BaseException:
        await run(svc, on_close)
        raise
    deadline = time.monotonic() + svc.request_timeout
    async for tok in tokens(
        svc, stream, deadline=deadline, request=request, on_close=on_close, closed=closed
    ):
        ids.append(tok)
    await asyncio.wrap_future(closed[0])
    fmt = ChatFormat(svc.engine.tokenizer)
    text = fmt.reply_text(ids, svc.stop_ids)
    rid = f"resp_{uuid.uuid4().hex}"
    if owned is not None:
        record = {
            "session": owned,
            "position": prep.session.position,
            "messages": messages + [{"role": "assistant", "content": text}],
        }
        svc.store.put("responses", rid, record)
        conv = body.conversation.id if hasattr(body.conversation, "id") else body.conversation
        if conv is not None:
            svc.store.put("conversations", conv, record)
    return {
        "id": rid,
        "object": "response",
        "created_at": int(time.time()),
        "model": body.model,
        "status": "completed",
        "previous_response_id": body.previous_response_id,
        "store": body.store,
        "metadata": body.metadata or {},
        "output": [
            {
                "type": "message",
                "id": f"msg_{uuid.uuid4().hex}",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ],
        "usage": {
            "input_tokens": prep.prompt_tokens,
            "input_tokens_details": {"cached_tokens": prep.cached_tokens},
            "output_tokens": len(ids),
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prep.prompt_tokens + len(ids),
        },
        "session": owned,
    }


# -- sessions ----------------------------------------------------------------------------
def _describe(svc: Service, s: Any) -> dict[str, Any]:
    st = svc.engine.session_stats(s)
    kind = (
        "owned"
        if s.name in svc.owned
        else "prefix-cache"
        if s.id in svc.index.sessions()
        else "request"
    )
    state = (
        "resident"
        if s.cache is not None
        else "swapped"
        if st.get("resident") == "cpu"
        else "on disk"
    )
    return {
        "id": s.name,
        "object": "session",
        "kind": kind,
        "state": state,
        "tokens": st.get("tokens", len(s.tokens)),
        "kv_bytes": st.get("kv_bytes", 0),
        "compression_ratio": st.get("compression_ratio"),
        "prefill_tokens": st["prefill_tokens"],
        "decode_tokens": st["decode_tokens"],
        "saved": s.db_id is not None,
    }


def _get(svc: Service, sid: str) -> Any:
    for s in list(svc.engine.sessions.values()):
        if sid in (s.name, s.id):
            return s
    raise not_found("session", sid)


@router.get("/v1/sessions")
async def list_sessions(request: Request) -> dict[str, Any]:
    """Open sessions with tokens, KV bytes, compression and state."""
    svc = service_of(request)
    data = await run(svc, lambda: [_describe(svc, s) for s in list(svc.engine.sessions.values())])
    return {"object": "list", "data": data}


@router.get("/v1/sessions/{sid}")
async def get_session(request: Request, sid: str) -> dict[str, Any]:
    """One open session (an owned one is restored from disk when needed)."""
    svc = service_of(request)

    def find() -> dict[str, Any]:
        try:
            return _describe(svc, _get(svc, sid))
        except APIError:
            if svc.store.get("conversations", sid) is None and not _owned_on_disk(svc, sid):
                raise
            return _describe(svc, svc.open_owned(sid))

    return await run(svc, find)


def _owned_on_disk(svc: Service, sid: str) -> bool:
    return any(r["session"] == sid for r in svc.store.data["responses"].values())


@router.delete("/v1/sessions/{sid}")
async def delete_session(request: Request, sid: str) -> dict[str, Any]:
    """Close an open session (frees its KV memory; its checkpoints stay)."""
    svc = service_of(request)

    def close() -> dict[str, Any]:
        s = _get(svc, sid)
        if svc.is_busy(s.name) or s.active is not None:
            raise APIError(409, f"session {sid!r} is running a request", code="session_busy")
        svc.index.remove(s.id)
        svc.engine.close_session(s)
        return {"id": sid, "object": "session.deleted", "deleted": True}

    return await run(svc, close)


@router.post("/v1/sessions/{sid}/fork")
async def fork_session(request: Request, sid: str) -> dict[str, Any]:
    """A copy-on-write fork of an open session (owned: saved at shutdown)."""
    svc = service_of(request)
    body = await parse_body(request, ForkRequest)

    def fork() -> dict[str, Any]:
        child = svc.engine.fork(_get(svc, sid), body.name)
        svc.owned.add(child.name)
        return _describe(svc, child)

    return await run(svc, fork)


@router.post("/v1/sessions/{sid}/save")
async def save_session(request: Request, sid: str) -> dict[str, Any]:
    """Checkpoint an open session now."""
    svc = service_of(request)

    def save() -> dict[str, Any]:
        s = _get(svc, sid)
        row = svc.engine.save(s)
        svc.owned.add(s.name)
        return {**_describe(svc, s), "checkpoint": {"id": row.id, "tokens": len(s.tokens)}}

    return await run(svc, save)
