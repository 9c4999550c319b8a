"""`Session`: one conversation's handle — prefill, generate (sync and async), stats, fork."""

from __future__ import annotations

import asyncio
import operator
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch

from agentrt.engine.sampling import SamplingParams, new_generator
from agentrt.errors import AgentRTError, ConfigError, SessionError

if TYPE_CHECKING:
    from agentrt.dms.session_cache import SessionCache
    from agentrt.engine.engine import Engine
    from agentrt.engine.hyper import ParallelResult
    from agentrt.engine.request import Request
    from agentrt.engine.swap import SwapRecord


def token_id_list(token_ids: Any) -> list[int]:
    """Token ids as a list of ints; SessionError for anything else (floats are never
    truncated, strings never parsed, bools are not ids)."""
    if isinstance(token_ids, torch.Tensor):
        if token_ids.is_floating_point() or token_ids.is_complex() or token_ids.dtype == torch.bool:
            raise SessionError(f"token ids must be integers, got a {token_ids.dtype} tensor")
        return [int(t) for t in token_ids.reshape(-1).tolist()]
    if isinstance(token_ids, str | bytes) or not hasattr(token_ids, "__iter__"):
        raise SessionError(
            f"token ids must be a list of ints, got {type(token_ids).__name__}",
            hint="encode text with the tokenizer first",
        )
    ids = []
    for t in token_ids:
        if isinstance(t, bool) or not hasattr(t, "__index__"):
            raise SessionError(
                f"token id {t!r} is not an integer",
                hint="token ids are whole numbers from the tokenizer; floats are not truncated",
            )
        ids.append(operator.index(t))
    return ids


def _sampling_params(
    max_new_tokens: int | None, params: SamplingParams | None, sampling: dict[str, Any]
) -> SamplingParams:
    """SamplingParams from either a ready object or keyword options (never both)."""
    if params is not None:
        if max_new_tokens is not None or sampling:
            raise ConfigError(
                "pass either params= or max_new_tokens/sampling keywords, not both",
                hint="use dataclasses.replace(params, ...) to change a SamplingParams",
            )
        return params
    return SamplingParams(
        max_new_tokens=256 if max_new_tokens is None else max_new_tokens, **sampling
    )


class TokenStream:
    """Iterator over the tokens of one generate request; the request already runs in the engine.

    Closing it (or leaving a `with` block, or dropping it) stops the request and frees the
    session for its next caller.
    """

    def __init__(
        self, engine: Engine, request: Request | None, release: Callable[[], None]
    ) -> None:
        self._engine = engine
        self._request = request
        self._release = release
        self._it = engine.stream(request) if request is not None else iter(())
        self._open = True

    def __iter__(self) -> TokenStream:
        return self

    def __next__(self) -> int:
        try:
            return next(self._it)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop generating (idempotent)."""
        if not self._open:
            return
        self._open = False
        if self._request is not None:
            self._engine.cancel(self._request)
        self._release()

    def __enter__(self) -> TokenStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finalizer
            pass


class Session:
    """A long-lived conversation whose KV cache lives in the engine's pool (or swapped out).

    Single-writer: a second concurrent prefill/generate on the same session raises SessionError.
    A thin handle: every method calls a public `Engine` method; the engine alone writes the
    state fields below.
    """

    def __init__(
        self, engine: Engine, name: str, *, seed: int | None = None, pinned: bool = False
    ) -> None:
        self.engine = engine
        self.id = uuid.uuid4().hex
        self.name = name
        self.cache: SessionCache | None = None  # None while swapped out
        self.swapped: SwapRecord | None = None  # the swap manager's record while swapped out
        self.tokens: list[int] = []  # token ids fed to the model so far
        self.pending_token: int | None = None  # sampled last, not fed yet (fed with the next call)
        self.last_logits: torch.Tensor | None = None  # [V] fp32 CPU, after the last fed token
        self.seed = seed
        self.generator = new_generator(seed)
        self.pinned = pinned
        self.last_used = time.monotonic()
        self.closed = False
        self.active: Request | None = None  # the running request, if any
        self.db_id: str | None = None  # catalog id once saved or opened from a checkpoint
        self.saved_tokens = 0  # tokens covered by the last checkpoint
        self.saved_at = time.monotonic()
        self.turns_since_save = 0
        self.error: AgentRTError | None = None  # set when a failed step left the cache unusable
        self.autosave_error: AgentRTError | None = None  # the last autosave failure, if any
        self.autosave_due = False  # a finished request made a save due (run off the step path)
        # telemetry: tokens this session fed, and the time of the steps it took part in
        self.counters = {"prefill_tokens": 0, "decode_tokens": 0, "steps": 0, "step_seconds": 0.0}
        self._guard = threading.Lock()

    def __repr__(self) -> str:
        where = "resident" if self.cache is not None else "swapped"
        return f"Session(name={self.name!r}, tokens={len(self.tokens)}, {where})"

    @property
    def position(self) -> int:
        """Positions the conversation occupies: tokens fed plus the sampled token not fed yet."""
        return len(self.tokens) + (self.pending_token is not None)

    @property
    def max_positions(self) -> int | None:
        """The model's trained positions (max_position_embeddings); None when it states none."""
        return self.engine.model.arch.max_positions or None

    @property
    def dirty(self) -> bool:
        """True when tokens were fed since the last checkpoint."""
        return len(self.tokens) != self.saved_tokens

    # -- single writer -----------------------------------------------------------------
    def check_usable(self) -> None:
        """Raise SessionError when the session is closed or lost its state in a failed step."""
        if self.closed:
            raise SessionError(f"session {self.name!r} is closed")
        if self.error is not None:
            raise self.error

    def _acquire(self) -> None:
        self.check_usable()
        if not self._guard.acquire(blocking=False):
            raise SessionError(
                f"session {self.name!r} is already in use by another caller",
                hint="a session is single-writer: wait for the other prefill/generate to finish, or fork it",
            )

    def _release(self) -> None:
        self._guard.release()

    # -- API -----------------------------------------------------------------------------
    def prefill(self, token_ids: list[int] | torch.Tensor) -> torch.Tensor:
        """Append tokens to the conversation; returns the logits [V] after the last one."""
        ids = token_id_list(token_ids)
        if not ids:
            raise SessionError("prefill needs at least one token")
        self._acquire()
        try:
            return self.engine.prefill(self, ids)
        finally:
            self._release()

    def generate(
        self,
        max_new_tokens: int | None = None,
        *,
        params: SamplingParams | None = None,
        **sampling: Any,
    ) -> TokenStream:
        """Start generating now; iterate the returned stream for token ids (stop any time).

        Pass either `params` or keyword sampling options (default 256 new tokens), not both.
        """
        params = _sampling_params(max_new_tokens, params, sampling)
        self._acquire()
        try:
            req = self.engine.start_generate(self, params)
        except BaseException:
            self._release()
            raise
        return TokenStream(self.engine, req, self._release)

    def generate_text(
        self,
        max_new_tokens: int | None = None,
        *,
        params: SamplingParams | None = None,
        **sampling: Any,
    ) -> Iterator[str]:
        """Like generate, but yields text deltas (never half a UTF-8 character)."""
        from agentrt.engine.detokenize import IncrementalDetokenizer

        tok = self.engine.tokenizer
        if tok is None:
            raise SessionError("this model has no tokenizer; use generate() for token ids")
        detok = IncrementalDetokenizer(tok)
        for token in self.generate(max_new_tokens, params=params, **sampling):
            delta = detok.push(token)
            if delta:
                yield delta
        rest = detok.flush()
        if rest:
            yield rest

    async def agenerate(
        self,
        max_new_tokens: int | None = None,
        *,
        params: SamplingParams | None = None,
        **sampling: Any,
    ) -> AsyncIterator[int]:
        """Async variant of generate: each engine step runs in a worker thread."""
        it = self.generate(max_new_tokens, params=params, **sampling)
        sentinel = object()
        try:
            while True:
                token = await asyncio.to_thread(next, it, sentinel)
                if token is sentinel:
                    break
                yield token
        finally:
            await asyncio.to_thread(it.close)

    def sample_parallel(
        self,
        n: int | str | None = "auto",
        max_new_tokens: int | None = None,
        *,
        params: SamplingParams | None = None,
        vote: str = "majority",
        answer_pattern: str | None = None,
        keep: str = "winner",
        **sampling: Any,
    ) -> ParallelResult:
        """Fork n chains from this prefilled session, decode them in one batch, vote on answers.

        Chain i uses seed `seed + i`; "auto" picks the largest n whose compressed chains fit
        the free KV memory. keep="winner" continues this session as the winning chain, "all"
        keeps every chain open as its own session (see docs/ENGINE.md, hyper-scaling).
        """
        from agentrt.engine.hyper import sample_parallel
        from agentrt.engine.vote import VoteSpec

        params = _sampling_params(max_new_tokens, params, sampling)
        spec = VoteSpec(vote=vote, answer_pattern=answer_pattern)
        self._acquire()
        try:
            return sample_parallel(self, n, params, spec, keep=keep)
        finally:
            self._release()

    def stats(self) -> dict[str, Any]:
        """Tokens, slots, KV bytes, compression ratio (overall, per layer, per head), residency."""
        return self.engine.session_stats(self)

    def pin(self) -> None:
        """Never swap this session out."""
        self.pinned = True

    def unpin(self) -> None:
        """Allow swapping this session out when the pool is full."""
        self.pinned = False

    def fork(self, name: str | None = None) -> Session:
        """A new session that continues from this one's state (copy-on-write blocks)."""
        return self.engine.fork(self, name)

    def close(self) -> None:
        """Free this session's KV memory; the handle becomes unusable."""
        self.engine.close_session(self)
