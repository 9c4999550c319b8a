"""The agent loop: one conversation on a `Session`, tools from a `ToolRegistry`, deltas only.

Each `ask(prompt)` prefills only the new messages (user turn, tool results) onto the live
KV cache, generates the assistant turn, runs the tool calls it makes (parsed from the
model's own format, validated, under the registry's permission policy) and repeats until
the model answers without a tool call or a limit is reached. The decode step is a
swappable function (`Decoder`), so a transcript can be replayed through a real session.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from agentrt.agent.callbacks import AgentCallbacks, ToolCallRecord
from agentrt.agent.chat import ChatFormat, Delta, Message
from agentrt.engine import SamplingParams
from agentrt.errors import ConfigError, SessionError, ToolError
from agentrt.tools import ToolCallError, ToolRegistry, parse_tool_calls

Decoder = Callable[[Any, SamplingParams], Iterable[int]]  # (session, params) -> token ids
TOOL_CALL_END = "</tool_call>"
SUMMARY_PROMPT = (
    "The conversation is about to run out of context. Summarise everything so far that is "
    "needed to continue: the task, the facts found, tool results that matter, and what is "
    "left to do. Reply with the summary only."
)
STEP_LIMIT_NOTE = "\n(step limit reached: answer now, without calling a tool)"
ON_LIMIT = ("stop", "summarize")


class ContextLimitError(SessionError):
    """The conversation reached the model's trained positions (max_position_embeddings)."""


def _positive(name: str, value: Any, *, allow_none: bool = False) -> str | None:
    if value is None and allow_none:
        return None
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
    return None if ok else f"{name}={value!r} must be a number > 0"


@dataclass(frozen=True)
class Limits:
    """Per-input limits: model turns, tokens per turn, tokens in all, wall time, tool output."""

    max_steps: int = 6  # model turns per input (tool rounds + the answer)
    max_new_tokens: int = 256  # per model turn
    max_tokens: int | None = None  # prefilled + generated tokens per input
    max_seconds: float | None = None  # wall time per input
    max_tool_result_chars: int = 8000  # longer tool results are cut (with a note)

    def __post_init__(self) -> None:
        """Refuse non-positive limits (all problems in one message)."""
        problems = [
            p
            for p in (
                _positive("max_steps", self.max_steps),
                _positive("max_new_tokens", self.max_new_tokens),
                _positive("max_tokens", self.max_tokens, allow_none=True),
                _positive("max_seconds", self.max_seconds, allow_none=True),
                _positive("max_tool_result_chars", self.max_tool_result_chars),
            )
            if p
        ]
        if problems:
            raise ConfigError("invalid agent limits: " + "; ".join(problems))


@dataclass(frozen=True)
class ContextPolicy:
    """What happens near max_position_embeddings: "stop" (default) or "summarize" and roll over."""

    on_limit: str = "stop"
    summary_tokens: int = 256

    def __post_init__(self) -> None:
        """Check the choice and the summary length."""
        if self.on_limit not in ON_LIMIT:
            raise ConfigError(
                f"on_context_limit={self.on_limit!r} is not one of {', '.join(ON_LIMIT)}"
            )
        if _positive("summary_tokens", self.summary_tokens):
            raise ConfigError(f"summary_tokens={self.summary_tokens!r} must be an int > 0")


@dataclass
class AgentResult:
    """The outcome of one `ask`: the answer, why the loop ended, tool calls, token counts."""

    answer: str = field(default="", repr=False)
    finish_reason: str = (
        "answer"  # answer|max_steps|max_tokens|max_seconds|context_limit|interrupted
    )
    message: str | None = None  # why it ended, when not with an answer
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    steps: int = 0
    prefilled_tokens: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0
    rollovers: int = 0

    @property
    def ok(self) -> bool:
        """True when the model gave an answer (possibly after the step limit)."""
        return self.finish_reason in ("answer", "max_steps")


def generate_decoder(session: Any, params: SamplingParams) -> Iterator[int]:
    """The default decode step: the session's own generation."""
    return session.generate(params=params)


def replay_decoder(turns: Iterable[list[int]]) -> Decoder:
    """A decode step that feeds recorded assistant turns (token ids) instead of sampling.

    Each call prefills the next turn through the real session (so the cache holds it exactly
    as if generated) and yields its ids; replays transcripts and forces specific outputs.
    """
    queue = iter(turns)

    def decode(session: Any, params: SamplingParams) -> Iterator[int]:
        ids = [int(t) for t in next(queue)][: params.max_new_tokens]
        if ids:
            session.prefill(ids)
        return iter(ids)

    return decode


class Agent:
    """An agent conversation on one session; `ask` runs one input to its answer."""

    def __init__(
        self,
        session: Any,
        *,
        tools: ToolRegistry | None = None,
        tool_choice: str = "auto",
        stop_at_call_end: bool = True,
        system: str | None = None,
        sampling: SamplingParams | None = None,
        limits: Limits | None = None,
        context: ContextPolicy | None = None,
        callbacks: AgentCallbacks | None = None,
        decoder: Decoder | None = None,
        messages: list[Message] | None = None,
        new_session: Callable[[Any], Any] | None = None,
    ) -> None:
        """Start a conversation on `session`, or continue one (`messages` = what its cache holds).

        `new_session(old)` makes the next session when the context rolls over (summarize).
        """
        tokenizer = session.engine.tokenizer
        if tokenizer is None:
            raise SessionError("the agent loop needs a model with a tokenizer")
        self.session = session
        self.registry = tools if tools is not None and len(tools) else None
        self.chat = ChatFormat(tokenizer, self.registry.schemas() if self.registry else [])
        self.sampling = sampling or SamplingParams()
        self.limits = limits or Limits()
        self.context = context or ContextPolicy()
        self.callbacks = callbacks or AgentCallbacks()
        self.decoder = decoder or generate_decoder
        self.new_session = new_session
        if tool_choice not in ("auto", "required") and (
            self.registry is None or tool_choice not in self.registry
        ):
            raise ConfigError(
                f"tool_choice={tool_choice!r} is not auto, required or an enabled tool",
                hint=f"enabled tools: {', '.join(self.registry.names()) if self.registry else 'none'}",
            )
        self.tool_choice = tool_choice
        self.stop_at_call_end = stop_at_call_end  # end a turn at `</tool_call>`
        self.stop_event = threading.Event()
        self.render_counts = {"full": 0, "diff": 0, "explicit": 0}
        model_eos = getattr(
            getattr(session.engine.model.hf, "generation_config", None), "eos_token_id", None
        )
        self.stops = self.chat.stop_token_ids(model_eos)
        self.system_text = system
        if messages is None:
            if session.tokens or session.pending_token is not None:
                raise SessionError(
                    f"session {session.name!r} already holds {session.position} tokens",
                    hint="pass the conversation it holds (messages=...) to continue it",
                )
            first = self.chat.system_message(system)
            self.messages: list[Message] = [first] if first else []
            self.ids: list[int] = []
        else:
            self.messages = [dict(m) for m in messages]
            self.ids = self._cache_ids()
        self.fed_messages = len(self.messages) if self.ids else 0  # messages the cache holds

    # -- state -------------------------------------------------------------------------
    @property
    def position(self) -> int:
        """Positions the conversation occupies in the model."""
        return len(self.ids)

    @property
    def max_positions(self) -> int | None:
        """The model's trained positions (max_position_embeddings)."""
        return self.session.max_positions

    def _cache_ids(self) -> list[int]:
        s = self.session
        return list(s.tokens) + ([s.pending_token] if s.pending_token is not None else [])

    def _check_cache(self) -> None:
        """The token ids the cache holds must be exactly the ones this loop fed."""
        held = self._cache_ids()
        if held != self.ids:
            first = next(
                (i for i, (a, b) in enumerate(zip(held, self.ids, strict=False)) if a != b),
                min(len(held), len(self.ids)),
            )
            raise SessionError(
                f"session {self.session.name!r} holds {len(held)} tokens but the agent loop fed "
                f"{len(self.ids)} (first difference at position {first})",
                hint="do not prefill or generate on a session while an agent loop drives it",
            )

    def stop(self) -> None:
        """Stop the running (or the next) `ask` at its next token (thread-safe; for Ctrl-C)."""
        self.stop_event.set()

    # -- the loop ----------------------------------------------------------------------
    def ask(self, prompt: str) -> AgentResult:
        """Run one user input to the final answer (or a limit); the conversation continues after."""
        t0 = time.monotonic()
        res = AgentResult()
        user: Message = {"role": "user", "content": prompt}
        new: list[Message] = [user]
        carry: list[Message] = []  # this input's messages, to re-seed after a rollover
        while True:
            if self._out_of_budget(res, t0):
                break
            if not self._feed(new, res, carry):
                break
            carry.extend(new)
            if self._out_of_budget(res, t0):
                self._open_empty_turn()
                break
            if self.stop_event.is_set():
                self._open_empty_turn()
                res.finish_reason, res.message = "interrupted", "interrupted before the reply"
                break
            first = res.steps == 0
            text, finish = self._reply(
                res, self.limits.max_new_tokens, prefix=self._call_prefix() if first else ""
            )
            res.steps += 1
            carry.append(self.messages[-1])
            if finish in ("interrupted", "context_limit"):
                res.answer, res.finish_reason = text, finish
                res.message = res.message or (
                    "interrupted during the reply" if finish == "interrupted" else None
                )
                break
            calls = parse_tool_calls(text) if self.registry else []
            if not calls:
                res.answer, res.finish_reason = text, "answer"
                break
            if res.steps >= self.limits.max_steps:
                res.answer, res.finish_reason = text, "max_steps"
                res.message = f"stopped after {res.steps} model turns (limits.max_steps)"
                break
            new = self._run_calls(calls, res, last_round=res.steps + 1 >= self.limits.max_steps)
        res.seconds = time.monotonic() - t0
        if res.finish_reason == "interrupted":
            self.stop_event.clear()  # the stop is spent; the next ask runs normally
        return res

    def _out_of_budget(self, res: AgentResult, t0: float) -> bool:
        lim = self.limits
        if (
            lim.max_tokens is not None
            and res.prefilled_tokens + res.generated_tokens >= lim.max_tokens
        ):
            res.finish_reason = "max_tokens"
            res.message = f"this input used {lim.max_tokens} tokens (limits.max_tokens)"
            return True
        if lim.max_seconds is not None and time.monotonic() - t0 >= lim.max_seconds:
            res.finish_reason = "max_seconds"
            res.message = f"this input ran {lim.max_seconds} s (limits.max_seconds)"
            return True
        return False

    def _limit_message(self, need: int) -> str:
        return (
            f"context limit: the conversation holds {self.position} of the model's "
            f"{self.max_positions} positions (max_position_embeddings) and the next step needs "
            f"{need} more"
        )

    def _delta(self, new: list[Message]) -> Delta:
        if not self.ids:
            return self.chat.prompt(self.messages + new, add_generation_prompt=True)
        return self.chat.delta(self.ids, self.messages, new)

    def _feed(self, new: list[Message], res: AgentResult, carry: list[Message]) -> bool:
        """Prefill the delta of `new` (rolling over first if configured); False at the limit."""
        delta = self._delta(new)
        limit = self.max_positions
        if limit is not None:
            if self.context.on_limit == "summarize":
                need = len(delta.ids) + self.limits.max_new_tokens + self._summary_reserve()
                if self.ids and self.position + need > limit:
                    self._rollover(res)
                    new = [*carry, *new]
                    delta = self._delta(new)
            need = len(delta.ids) + 1
            if self.position + need > limit:
                res.finish_reason = "context_limit"
                res.message = self._limit_message(need)
                if self.context.on_limit == "stop":
                    res.message += (
                        "; stopped (set session.on_context_limit: summarize to continue in a "
                        "new session seeded with a summary)"
                    )
                return False
        self._prefill(delta)
        self.messages.extend(new)
        self.fed_messages = len(self.messages)
        res.prefilled_tokens += len(delta.ids)
        return True

    def _prefill(self, delta: Delta) -> None:
        if not delta.ids:
            return
        self._check_cache()
        self.session.prefill(delta.ids)
        self.ids.extend(delta.ids)
        self.render_counts[delta.how] = self.render_counts.get(delta.how, 0) + 1
        self.callbacks.on_prefill(len(delta.ids), delta.how)

    def _open_empty_turn(self) -> None:
        """The cache ends with the generation prompt: record the (empty) open assistant turn."""
        self.messages.append({"role": "assistant", "content": ""})
        self.fed_messages = len(self.messages)

    def _call_prefix(self) -> str:
        """The start of a tool call the first turn must begin with (tool_choice), else ""."""
        if self.registry is None or self.tool_choice == "auto":
            return ""
        listed = self.chat.tools_in_system  # SmolLM2's `[...]` list, else Hermes' object
        head = "<tool_call>[" if listed else "<tool_call>\n"
        if self.tool_choice == "required":
            return head + '{"name": "'
        tool = self.registry.get(self.tool_choice)
        head += '{"name": ' + json.dumps(tool.name) + ', "arguments": {'
        required = tool.parameters["required"]
        if not required:
            return head
        prop = tool.parameters["properties"][required[0]]
        return head + json.dumps(required[0]) + ": " + ('"' if prop["type"] == "string" else "")

    def _reply(
        self, res: AgentResult, max_new: int, *, tools: bool = True, prefix: str = ""
    ) -> tuple[str, str]:
        """Generate one assistant turn (after a forced `prefix`); returns its text and end."""
        from agentrt.engine.detokenize import IncrementalDetokenizer

        if prefix:
            forced = self.chat.encode(prefix)
            room = (self.max_positions or 0) - self.position
            if self.max_positions is None or len(forced) < room:
                self._check_cache()
                self.session.prefill(forced)
                self.ids.extend(forced)
                res.prefilled_tokens += len(forced)
                self.callbacks.on_token(prefix)
            else:
                prefix = ""

        room = self.max_positions - self.position if self.max_positions else max_new
        left = (
            self.limits.max_tokens - res.prefilled_tokens - res.generated_tokens
            if self.limits.max_tokens is not None
            else max_new
        )
        n = min(max_new, room, max(left, 1))
        if n <= 0:
            self._open_empty_turn()
            res.message = self._limit_message(1)
            return "", "context_limit"
        strings = tuple(self.sampling.stop_strings) + self.chat.stop_strings()
        if tools and self.registry is not None and self.stop_at_call_end:
            strings += (TOOL_CALL_END,)
        params = dataclasses.replace(
            self.sampling,
            max_new_tokens=n,
            stop_token_ids=tuple(sorted(set(self.sampling.stop_token_ids) | self.stops)),
            stop_strings=strings,
        )
        self._check_cache()
        detok = IncrementalDetokenizer(self.chat.tokenizer)
        generated: list[int] = []
        interrupted = False
        stream = self.decoder(self.session, params)
        try:
            for token in stream:
                generated.append(int(token))
                piece = detok.push(token)
                if piece:
                    self.callbacks.on_token(piece)
                if self.stop_event.is_set():
                    interrupted = True
                    break
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
        if interrupted and isinstance(stream, list):  # the decoder fed the whole turn already
            generated = [int(t) for t in stream]
        rest = detok.flush()
        if rest:
            self.callbacks.on_token(rest)
        self.ids.extend(generated)
        res.generated_tokens += len(generated)
        text = prefix + self.chat.reply_text(generated, self.stops)
        self.messages.append({"role": "assistant", "content": text})
        self.fed_messages = len(self.messages)
        self._check_cache()
        stopped = bool(generated) and (
            generated[-1] in self.stops or any(s in detok.text for s in strings)
        )
        if interrupted:
            finish = "interrupted"
        elif stopped:
            finish = "stop"
        elif len(generated) >= n and n == room and n < max_new:
            finish = "context_limit"
            res.message = self._limit_message(max_new - n) + "; the reply was cut"
        else:
            finish = "length"
        self.callbacks.on_turn_end(text, finish)
        return text, finish

    def _run_calls(self, calls: list[Any], res: AgentResult, *, last_round: bool) -> list[Message]:
        """Run the parsed calls under the policy; their results (or errors) as tool messages."""
        out: list[Message] = []
        for call in calls:
            if isinstance(call, ToolCallError):
                rec = ToolCallRecord(call.name, {}, error=call.message)
                self.callbacks.on_tool_call(rec)
            else:
                rec = ToolCallRecord(call.name, call.arguments)
                self.callbacks.on_tool_call(rec)
                t0 = time.monotonic()
                try:
                    rec.result = self.registry.call(call.name, call.arguments)
                except ToolError as err:
                    rec.error = str(err)
                rec.seconds = time.monotonic() - t0
            self.callbacks.on_tool_result(rec)
            res.tool_calls.append(rec)
            content = rec.result if rec.error is None else f"error: {rec.error}"
            cap = self.limits.max_tool_result_chars
            if len(content) > cap:
                content = content[:cap] + f"\n[cut: showed {cap} of {len(content)} characters]"
            out.append({"role": "tool", "name": rec.name or "unknown", "content": content})
        if last_round and out:
            out[-1] = {**out[-1], "content": out[-1]["content"] + STEP_LIMIT_NOTE}
        return out

    # -- context rollover --------------------------------------------------------------
    def _summary_reserve(self) -> int:
        request = (
            self.chat.delta(self.ids, self.messages, [_summary_message()]) if self.ids else None
        )
        return (len(request.ids) if request else 0) + 8 + self.context.summary_tokens

    def _rollover(self, res: AgentResult) -> None:
        """Ask for a summary, then continue in a new session seeded with it."""
        if self.new_session is None:
            raise ConfigError("context rollover needs a new_session factory for the agent loop")
        request = [_summary_message()]
        delta = self.chat.delta(self.ids, self.messages, request)
        if self.position + len(delta.ids) + 1 > (self.max_positions or 0):
            raise ContextLimitError(
                self._limit_message(len(delta.ids) + 1) + "; no room left to summarise"
            )
        self._prefill(delta)
        self.messages.extend(request)
        res.prefilled_tokens += len(delta.ids)
        summary, _ = self._reply(res, self.context.summary_tokens, tools=False)
        old = self.session
        self.session = self.new_session(old)
        system = (self.system_text + "\n\n" if self.system_text else "") + (
            "Summary of the conversation so far:\n" + summary.strip()
        )
        first = self.chat.system_message(system)
        self.messages = [first] if first else []
        self.ids = []
        self.fed_messages = 0
        res.rollovers += 1
        self.callbacks.on_rollover(summary, old, self.session)


def _summary_message() -> Message:
    return {"role": "user", "content": SUMMARY_PROMPT}


__all__ = [
    "Agent",
    "AgentResult",
    "ContextLimitError",
    "ContextPolicy",
    "Decoder",
    "Limits",
    "generate_decoder",
    "replay_decoder",
]
