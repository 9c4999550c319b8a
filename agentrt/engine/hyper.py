"""Inference-time hyper-scaling: N reasoning chains forked from one prefilled session.

The prompt is prefilled once; N copy-on-write forks of the session decode together in
the engine's shared steps (one batch), each with its own seed (`seed + i`). Each chain's
answer is extracted and a vote picks the winner, which becomes the session's
continuation (no token is fed twice), or every chain is kept as its own session.
With DMS the chains are compressed, so the KV memory of one dense chain holds several.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from agentrt.engine.vote import VoteSpec, extract_answer, pick, tally
from agentrt.errors import ConfigError, SessionError

if TYPE_CHECKING:
    from agentrt.engine.sampling import SamplingParams
    from agentrt.engine.session import Session

KEEP = ("winner", "all", "none")
MAX_CHAINS = 16  # the most chains `n="auto"` picks


@dataclass
class ChainResult:
    """One chain: its seed, tokens, text, answer and the KV memory it held at the end."""

    index: int
    seed: int
    token_ids: list[int] = field(repr=False)
    text: str = field(repr=False)
    answer: str | None
    finish_reason: str  # stop | length
    kv_bytes: int  # pool bytes of the blocks it references (the shared prompt counted too)
    kv_bytes_own: int  # pool bytes only this chain holds (what closing it would free)
    compression_ratio: float
    session: Session | None = field(default=None, repr=False)  # open when kept

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (no session handle)."""
        return {
            "index": self.index,
            "seed": self.seed,
            "answer": self.answer,
            "text": self.text,
            "tokens": len(self.token_ids),
            "finish_reason": self.finish_reason,
            "kv_bytes": self.kv_bytes,
            "kv_bytes_own": self.kv_bytes_own,
            "compression_ratio": round(self.compression_ratio, 3),
        }


@dataclass
class ParallelResult:
    """N chains from one prefill, the vote over their answers and the memory they took."""

    chains: list[ChainResult]
    winner: int
    vote: str
    votes: dict[str, int]  # answer -> chains that gave it
    prompt_tokens: int  # tokens the shared prefix holds (prefilled once, before forking)
    prefill_tokens: int  # tokens prefilled while the chains ran (0: none re-read the prompt)
    pool_bytes_added: int  # pool bytes the N chains took beyond the shared prefix, together
    prefix_bytes: int  # pool bytes of the shared prefix (stored once for all chains)
    n_note: str | None = None  # how n was chosen when it was "auto"

    @property
    def answer(self) -> str | None:
        """The winning chain's answer."""
        return self.chains[self.winner].answer

    @property
    def text(self) -> str:
        """The winning chain's text."""
        return self.chains[self.winner].text

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary: every chain's answer and KV bytes, the vote and the memory."""
        return {
            "n": len(self.chains),
            "vote": self.vote,
            "winner": self.winner,
            "answer": self.answer,
            "answers": [c.answer for c in self.chains],
            "votes": self.votes,
            "prompt_tokens": self.prompt_tokens,
            "prefill_tokens": self.prefill_tokens,
            "prefix_bytes": self.prefix_bytes,
            "pool_bytes_added": self.pool_bytes_added,
            "n_note": self.n_note,
            "chains": [c.as_dict() for c in self.chains],
        }


def max_chains(session: Session, max_new_tokens: int, cap: int = MAX_CHAINS) -> tuple[int, str]:
    """The largest N whose compressed chains fit the pool's free blocks now, and why.

    Each chain is estimated to grow every stream by max_new_tokens / r slots, where r is
    the session's measured compression ratio (tokens / slots; 1 for a dense or short
    session), plus one copy-on-write block per stream. An estimate: the engine still
    swaps idle sessions out, or refuses with BudgetError, when chains outgrow it.
    """
    engine = session.engine
    pool = engine.pool
    st = session.stats()
    ratio = max(1.0, float(st.get("compression_ratio") or 1.0))
    layers, heads = engine.model.arch.num_layers, engine.model.arch.num_kv_heads
    streams = layers * heads
    new_slots = math.ceil(max_new_tokens / ratio)
    per_chain = streams * (pool.spec.blocks_for_slots(new_slots) + 1)
    free = pool.num_free
    n = max(1, min(cap, free // per_chain))
    note = (
        f"n=auto: {n} chains fit the {free} free KV blocks "
        f"({free * pool.bytes_per_block / 2**20:.1f} MiB); each chain needs about {per_chain} "
        f"blocks for {max_new_tokens} new tokens at the measured compression {ratio:.2f}x"
        + (f" (capped at {cap})" if free // per_chain > cap else "")
        + (" (not even one fits: running 1)" if free < per_chain else "")
    )
    return n, note


def _seed_base(session: Session, params: SamplingParams) -> int:
    """The first chain's seed: the call's seed, else one drawn from the session's generator."""
    if params.seed is not None:
        return int(params.seed)
    return int(torch.randint(0, 2**31 - 1, (1,), generator=session.generator))


def _text(session: Session, ids: list[int]) -> str:
    tok = session.engine.tokenizer
    if tok is None:  # a model without a tokenizer: answers are matched against the ids
        return " ".join(str(t) for t in ids)
    return tok.decode(ids, skip_special_tokens=True)


def sample_parallel(
    session: Session,
    n: int | str | None,
    params: SamplingParams,
    spec: VoteSpec | None = None,
    *,
    keep: str = "winner",
) -> ParallelResult:
    """Fork `n` chains of a prefilled session, decode them in one batch, vote (caller holds it).

    Chain i samples with seed `params.seed + i` (a seed drawn from the session when None),
    so chain i equals an unforked `generate(seed=params.seed + i)` token for token.
    keep="winner": the session continues as the winning chain; "all": the session stays
    at the prompt and every chain stays open as its own session; "none": all are closed.
    """
    spec = spec or VoteSpec()
    if keep not in KEEP:
        raise ConfigError(f"keep={keep!r} is not one of {', '.join(KEEP)}")
    engine = session.engine
    if session.pending_token is not None:  # feed it once, before forking, not once per chain
        engine.prefill(session, [])
    if session.last_logits is None:
        raise SessionError(f"session {session.name!r} is empty: prefill a prompt first")
    note = None
    if n is None or n == "auto":
        n, note = max_chains(session, params.max_new_tokens)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"n={n!r} must be a whole number ≥ 1 or 'auto'")
    pool = engine.pool
    used_before = pool.num_used
    prefill_before = engine.telemetry.prefill_tokens
    prefix_bytes = int(session.stats().get("kv_bytes", 0))
    prompt_tokens = len(session.tokens)
    base = _seed_base(session, params)
    children: list[Session] = []
    try:
        for _ in range(n):
            children.append(engine.fork(session))
        streams = [
            c.generate(params=dataclasses.replace(params, seed=base + i))
            for i, c in enumerate(children)
        ]
        outputs = [list(s) for s in streams]  # each stream steps the engine for all chains
        added = (pool.num_used - used_before) * pool.bytes_per_block
        chains = []
        stops = set(params.stop_token_ids)
        if not params.ignore_eos and engine.tokenizer is not None:
            stops.add(engine.tokenizer.eos_token_id)
        for i, (child, ids) in enumerate(zip(children, outputs, strict=True)):
            st = child.stats()
            own = child.cache.blocks_exclusive if child.cache is not None else 0
            text = _text(session, ids)
            full = len(ids) >= params.max_new_tokens and not (ids and ids[-1] in stops)
            chains.append(
                ChainResult(
                    index=i,
                    seed=base + i,
                    token_ids=ids,
                    text=text,
                    answer=extract_answer(text, spec.answer_pattern),
                    finish_reason="length" if full else "stop",
                    kv_bytes=int(st.get("kv_bytes", 0)),
                    kv_bytes_own=own * pool.bytes_per_block,
                    compression_ratio=float(st.get("compression_ratio", 1.0)),
                )
            )
        prefilled = engine.telemetry.prefill_tokens - prefill_before
    except BaseException:
        for c in children:
            engine.close_session(c)
        raise
    answers = [c.answer for c in chains]
    winner = pick(answers, [len(c.token_ids) for c in chains], spec.vote)
    for i, (chain, child) in enumerate(zip(chains, children, strict=True)):
        if keep == "all":
            chain.session = child
        elif keep == "winner" and i == winner:
            engine.adopt(session, child)
            chain.session = session
        else:
            engine.close_session(child)
    return ParallelResult(
        chains=chains,
        winner=winner,
        vote=spec.vote,
        votes=tally(answers),
        prompt_tokens=prompt_tokens,
        prefill_tokens=prefilled,
        pool_bytes_added=added,
        prefix_bytes=prefix_bytes,
        n_note=note,
    )


__all__ = ["KEEP", "ChainResult", "ParallelResult", "max_chains", "sample_parallel"]
