"""POST /v1/chat/completions: stateless chat that reuses the longest prefix a live session holds."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from agentrt.agent.chat import ChatFormat, Message
from agentrt.engine import SamplingParams
from agentrt.engine.detokenize import IncrementalDetokenizer
from agentrt.errors import AgentRTError
from agentrt.server.app import parse_body, run, service_of, tokens
from agentrt.server.errors import APIError, from_agentrt, internal
from agentrt.server.schemas import ChatCompletionRequest, ChatMessage, NamedToolChoice, TextPart
from agentrt.server.service import Prepared, Service
from agentrt.tools import ToolCall, parse_tool_calls

router = APIRouter()


def content_text(content: str | list[TextPart] | None) -> str:
    """A message's content as one string."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.text for p in content)


def tool_call_text(calls: list[dict[str, Any]], fmt: ChatFormat) -> str:
    """Tool calls as the model writes them: SmolLM2's `<tool_call>[...]`, else one Hermes tag each."""
    if fmt.tools_in_system:
        return "<tool_call>" + json.dumps(calls, ensure_ascii=False) + "</tool_call>"
    return "".join(
        "<tool_call>\n" + json.dumps(c, ensure_ascii=False) + "\n</tool_call>" for c in calls
    )


def to_messages(messages: list[ChatMessage], fmt: ChatFormat) -> list[Message]:
    """OpenAI messages as template messages (tool calls as the model's own text, tools in system)."""
    out: list[Message] = []
    for m in messages:
        text = content_text(m.content)
        if m.role == "assistant" and m.tool_calls:
            calls = []
            for c in m.tool_calls:
                try:
                    args = json.loads(c.function.arguments or "{}")
                except json.JSONDecodeError:
                    raise APIError(
                        400, f"arguments of tool call {c.id!r} are not JSON", param="messages"
                    ) from None
                calls.append({"name": c.function.name, "arguments": args})
            text += tool_call_text(calls, fmt)
        role = "system" if m.role == "developer" else m.role
        out.append({"role": role, "content": text})
    if fmt.tools and fmt.tools_in_system:
        if out and out[0]["role"] == "system":
            sys_msg = fmt.system_message(out[0]["content"])
            out[0] = sys_msg if sys_msg is not None else out[0]
        else:
            sys_msg = fmt.system_message(None)
            if sys_msg is not None:
                out.insert(0, sys_msg)
    return out


def call_prefix(fmt: ChatFormat, choice: Any, tools: list[dict[str, Any]]) -> str:
    """The start of a tool call that `required` or a named tool_choice forces, else ""."""
    if not tools or choice in (None, "auto", "none"):
        return ""
    head = "<tool_call>[" if fmt.tools_in_system else "<tool_call>\n"
    if choice == "required":
        return head + '{"name": "'
    assert isinstance(choice, NamedToolChoice)
    if not any(t["function"]["name"] == choice.function.name for t in tools):
        raise APIError(
            400,
            f"tool_choice names {choice.function.name!r}, which is not in tools",
            param="tool_choice",
        )
    return head + '{"name": ' + json.dumps(choice.function.name) + ', "arguments": '


def assistant_message(text: str, tools_on: bool) -> tuple[dict[str, Any], bool]:
    """The reply as an OpenAI message: tool calls parsed out when tools are on; (message, has_calls)."""
    calls = [c for c in parse_tool_calls(text) if isinstance(c, ToolCall)] if tools_on else []
    if not calls:
        return {"role": "assistant", "content": text}, False
    before = text.split("<tool_call>", 1)[0].strip()
    return {
        "role": "assistant",
        "content": before or None,
        "tool_calls": [
            {
                "id": f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {
                    "name": c.name,
                    "arguments": json.dumps(c.arguments, ensure_ascii=False),
                },
            }
            for c in calls
        ],
    }, True


def cut_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """Text before the first stop string; whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class Job:
    """One chat completion request, parsed and rendered."""

    def __init__(self, svc: Service, body: ChatCompletionRequest) -> None:
        self.svc, self.body = svc, body
        self.max_tokens = body.max_completion_tokens or body.max_tokens or svc.default_max_tokens
        if self.max_tokens > svc.max_tokens_cap:
            raise APIError(400, f"max_tokens is capped at {svc.max_tokens_cap}", param="max_tokens")
        self.tools = (
            [t.model_dump(exclude_none=True) for t in body.tools]
            if body.tools and body.tool_choice != "none"
            else []
        )
        fmt = ChatFormat(svc.engine.tokenizer, tools=self.tools)
        self.fmt = fmt
        self.prefix = call_prefix(fmt, body.tool_choice, self.tools)
        messages = to_messages(body.messages, fmt)
        self.ids = fmt.prompt(messages, add_generation_prompt=True).ids
        if self.prefix:
            self.ids += fmt.encode(self.prefix)
        stop = body.stop if isinstance(body.stop, list) else [body.stop] if body.stop else []
        self.stop_strings = tuple(s for s in stop if s)
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.deadline = time.monotonic() + svc.request_timeout

    def params(self, i: int) -> SamplingParams:
        """Sampling of choice i (seed + i, so choices differ but replay)."""
        b = self.body
        return SamplingParams(
            max_new_tokens=self.max_tokens,
            temperature=1.0 if b.temperature is None else b.temperature,
            top_p=1.0 if b.top_p is None else b.top_p,
            seed=None if b.seed is None else b.seed + i,
            stop_token_ids=tuple(sorted(self.svc.stop_ids)),
            stop_strings=self.stop_strings,
        )

    def finish_reason(self, ids: list[int], stopped_by_string: bool) -> str:
        """stop (stop token or string) or length."""
        if stopped_by_string or (ids and ids[-1] in self.svc.stop_ids):
            return "stop"
        return "length" if len(ids) >= self.max_tokens else "stop"

    def chunk(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> str:
        """One SSE event in OpenAI's chunk format."""
        obj: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.body.model,
            "choices": choices,
        }
        if usage is not None:
            obj["usage"] = usage
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def usage(prompt: int, completion: int, cached: int) -> dict[str, Any]:
    """OpenAI's usage object with cached prompt tokens."""
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


async def generate_choice(
    job: Job, i: int, request: Request, prep: Prepared | None = None
) -> AsyncIterator[int | tuple[Any, ...]]:
    """Token ids of choice i, then one ("done", cached) tuple once the session is settled."""
    svc = job.svc
    if prep is None:
        prep = await run(svc, svc.prepare, job.ids, job.max_tokens)
    try:
        stream = await run(svc, lambda: prep.session.generate(params=job.params(i)))
    except BaseException:
        await run(svc, lambda: svc.finish(prep, keep=False))
        raise
    ok = {"done": False}
    closed: list[Any] = []

    def on_close() -> None:
        svc.finish(prep, keep=ok["done"] and i == 0)

    async for tok in tokens(
        svc, stream, deadline=job.deadline, request=request, on_close=on_close, closed=closed
    ):
        yield tok
    ok["done"] = True
    await asyncio.wrap_future(closed[0])
    yield ("done", prep.cached_tokens)


async def prepare_choices(job: Job, first: Prepared) -> list[Prepared]:
    """Choice 0 on the prepared prompt, choices 1..n-1 on copy-on-write forks of it (one prefill)."""
    svc = job.svc
    if job.body.n == 1:
        return [first]
    try:
        rest = await run(svc, svc.fork_prepared, first, job.body.n - 1, job.max_tokens)
    except BaseException:
        await run(svc, lambda: svc.finish(first, keep=False))
        raise
    return [first, *rest]


async def collect_choice(
    job: Job, i: int, request: Request, prep: Prepared
) -> tuple[list[int], int]:
    """All token ids of choice i and the cached prompt tokens."""
    ids: list[int] = []
    cached = 0
    async for item in generate_choice(job, i, request, prep):
        if isinstance(item, tuple):
            cached = item[1]
        else:
            ids.append(item)
    return ids, cached


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Any:
    """OpenAI chat completions (stream or not); prompt prefix reused from live sessions.

    `n` choices share one prefill: n-1 copy-on-write forks of the prompt decode together
    with choice 0 in the engine's shared steps.
    """
    svc = service_of(request)
    body = await parse_body(request, ChatCompletionRequest)
    job = Job(svc, body)
    # admission errors (429, 400) come before the 200 status line
    first = await run(svc, svc.prepare, job.ids, job.max_tokens)
    if body.stream:
        return StreamingResponse(stream_chat(job, request, first), media_type="text/event-stream")
    preps = await prepare_choices(job, first)
    outs = await asyncio.gather(
        *(collect_choice(job, i, request, p) for i, p in enumerate(preps)), return_exceptions=True
    )
    for out in outs:
        if isinstance(out, BaseException):
            raise out
    choices, completion = [], 0
    for i, (ids, _cached) in enumerate(outs):
        completion += len(ids)
        text, by_string = cut_at_stop(job.fmt.reply_text(ids, svc.stop_ids), job.stop_strings)
        message, has_calls = assistant_message(job.prefix + text, bool(job.tools))
        reason = "tool_calls" if has_calls else job.finish_reason(ids, by_string)
        choices.append({"index": i, "message": message, "finish_reason": reason, "logprobs": None})
    return JSONResponse(
        {
            "id": job.id,
            "object": "chat.completion",
            "created": job.created,
            "model": body.model,
            "choices": choices,
            "usage": usage(len(job.ids), completion, first.cached_tokens),
        }
    )


async def choice_chunks(
    job: Job, i: int, request: Request, prep: Prepared, counts: dict[str, int]
) -> AsyncIterator[str]:
    """SSE chunks of choice i: role, content deltas (tool calls at the end), finish."""
    svc = job.svc
    hold = max((len(s) for s in job.stop_strings), default=1) - 1
    yield job.chunk(
        [{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
    )
    detok = IncrementalDetokenizer(svc.engine.tokenizer)
    ids: list[int] = []
    text, sent = job.prefix, 0
    async for item in generate_choice(job, i, request, prep):
        if isinstance(item, tuple):
            continue
        ids.append(item)
        if item in svc.stop_ids:
            continue
        text += detok.push(item)
        if not job.tools:  # tool calls are parsed from the whole reply, sent at the end
            safe, _ = cut_at_stop(text, job.stop_strings)
            upto = len(safe) if len(safe) < len(text) else max(len(text) - hold, sent)
            if upto > sent:
                yield job.chunk(
                    [{"index": i, "delta": {"content": text[sent:upto]}, "finish_reason": None}]
                )
                sent = upto
    text += detok.flush()
    text, by_string = cut_at_stop(text, job.stop_strings)
    counts["completion"] += len(ids)
    has_calls = False
    if job.tools:
        message, has_calls = assistant_message(text, True)
        if has_calls:
            calls = [dict(c, index=k) for k, c in enumerate(message["tool_calls"])]
            yield job.chunk([{"index": i, "delta": {"tool_calls": calls}, "finish_reason": None}])
    if not has_calls and len(text) > sent:
        yield job.chunk([{"index": i, "delta": {"content": text[sent:]}, "finish_reason": None}])
    reason = "tool_calls" if has_calls else job.finish_reason(ids, by_string)
    yield job.chunk([{"index": i, "delta": {}, "finish_reason": reason}])


async def stream_chat(job: Job, request: Request, first: Prepared) -> AsyncIterator[str]:
    """SSE chunks of all choices as they come (they decode together), then usage and [DONE]."""
    svc = job.svc
    counts = {"completion": 0}
    queue: asyncio.Queue[str | BaseException | None] = asyncio.Queue()
    preps: list[Prepared] = []
    handed: set[int] = set()  # choices whose generate_choice settles their session itself
    tasks: list[asyncio.Task[None]] = []

    async def pump(i: int, prep: Prepared) -> None:
        handed.add(i)
        try:
            async for chunk in choice_chunks(job, i, request, prep, counts):
                await queue.put(chunk)
        except Exception as err:  # noqa: BLE001 - reported in the stream by the consumer
            await queue.put(err)
        finally:
            await queue.put(None)

    try:
        try:
            preps = await prepare_choices(job, first)
        except BaseException:
            handed.add(0)  # prepare_choices settled `first`
            raise
        tasks = [asyncio.create_task(pump(i, p)) for i, p in enumerate(preps)]
        running = len(tasks)
        while running:
            item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
        opts = job.body.stream_options
        if opts is not None and opts.include_usage:
            yield job.chunk([], usage(len(job.ids), counts["completion"], first.cached_tokens))
    except APIError as err:
        yield f"data: {json.dumps(err.body())}\n\n"
    except AgentRTError as err:
        yield f"data: {json.dumps(from_agentrt(err).body())}\n\n"
    except Exception as err:  # noqa: BLE001 - the status line is sent: report in the stream
        yield f"data: {json.dumps(internal(err).body())}\n\n"
    finally:
        for t in tasks:
            t.cancel()
        for i, prep in enumerate(preps or [first]):
            if i not in handed:  # cancelled before its choice started
                svc.executor.submit(svc.finish, prep, keep=False)
    yield "data: [DONE]\n\n"
