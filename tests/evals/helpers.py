"""Shared builders for the eval tests: a small demo tokenizer, tiny models, a reference oracle."""

from __future__ import annotations

import functools
from typing import Any

import torch

from agentrt.dms import DMSModel
from agentrt.evals.render import render_ids
from agentrt.evals.tasks import Item
from tests.dms.serving_helpers import tiny_model

VOCAB = 1024  # BPE merges of the test tokenizer (the real demo uses 2048)


@functools.lru_cache(maxsize=1)
def small_tokenizer() -> Any:
    """The demo tokenizer recipe at a small size (trained once per test process, ~0.5 s)."""
    from agentrt.demo.tokenizer import build_tokenizer

    return build_tokenizer(vocab_size=VOCAB, documents=200, seed=0)


def tiny_eval_model(*, dms: bool = False, window: int = 8, seed: int = 0) -> DMSModel:
    """A 2-layer random qwen3 whose vocabulary matches `small_tokenizer()`.

    dms=True: adapter flavour with random adapters (evicts a fair share of tokens);
    dms=False: a plain model (served dense; the "dms" policy is skipped).
    """
    tok = small_tokenizer()
    flavour = "adapter" if dms else "qneuron"
    base = tiny_model(flavour=flavour, window=window, offset=0.0, seed=seed)
    base.hf.resize_token_embeddings(len(tok), mean_resizing=False)
    return DMSModel(base.hf, base.dms if dms else None, tokenizer=tok)


class OracleModel:
    """Wraps a DMSModel: serves its caches for real but answers with the items' references.

    At each step the next token is the one that follows the session's history in one of
    the reference conversations (rendered with the tokenizer), so a correct runner gets
    every item right whatever the policy; any drift in rendering breaks the match.
    """

    def __init__(self, model: DMSModel, items: list[Item]) -> None:
        self.model = model
        tok = model.tokenizer
        self.docs = [
            render_ids(tok, it.conversation(), it.tool_list, add_generation_prompt=False)
            for it in items
        ]
        self.end = int(tok.convert_tokens_to_ids("<|im_end|>"))
        self.history: dict[int, list[int]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def step(self, batch: list, **kw: Any) -> list[torch.Tensor]:
        """Run the real step (cache bookkeeping), then return one-hot logits of the reference."""
        fresh = [item.cache.next_pos == 0 for item in batch]  # new sessions (ids get reused)
        real = self.model.step(batch, **kw)
        out = []
        for item, logits, new in zip(batch, real, fresh, strict=True):
            if new:
                self.history[id(item.cache)] = []
            hist = self.history[id(item.cache)]
            hist.extend(item.token_ids.tolist())
            doc = next((d for d in self.docs if d[: len(hist)] == hist), None)
            assert doc is not None, f"history of {len(hist)} tokens matches no reference"
            nxt = doc[len(hist)] if len(hist) < len(doc) else self.end
            onehot = torch.full_like(logits, -1e4)
            onehot[nxt] = 0.0
            out.append(onehot)
        return out
