"""Shared builders for the eval tests: a small chat tokenizer, tiny models, a reference oracle."""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Iterator
from typing import Any

import torch

from agentrt.dms import DMSModel
from agentrt.errors import ConfigError
from agentrt.evals.render import render_ids
from agentrt.evals.tasks import TASKS, Item, item_seed
from tests.dms.serving_helpers import tiny_model
from tests.evals.chat_template import CHAT_TEMPLATE, render

VOCAB = 1024  # BPE vocabulary of the test tokenizer
DOC_END = "<|endoftext|>"
SPECIAL_TOKENS = (DOC_END, "<|im_start|>", "<|im_end|>")
# single tokens that stay visible in decoded text (not special: replies keep them)
ADDED_TOKENS = (
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<tools>",
    "</tools>",
)


def approx_counter(messages: list[dict[str, Any]], tools: list[dict] | None) -> int:
    """A tokenizer-free length estimate (4 characters a token) for the tokenizer's own corpus."""
    chars = sum(len(m["content"]) for m in messages) + (len(json.dumps(tools)) if tools else 0)
    return chars // 4


def tokenizer_corpus(documents: int, seed: int) -> Iterator[str]:
    """Rendered task-suite conversations (jinja only, no tokenizer) to train the BPE on."""
    rng = random.Random(f"tokenizer/{seed}")
    for _ in range(documents):
        task = rng.choice(sorted(TASKS))
        length = rng.randint(64, 1024)
        item_id = item_seed(rng.getrandbits(63), task, length, 0, split="train")
        for _ in range(8):
            try:
                item = TASKS[task].generate(item_id, length, approx_counter)
                break
            except ConfigError:  # below the task's shortest prompt
                length = int(length * 1.5) + 16
        yield render(item.conversation(), item.tool_list) + DOC_END


@functools.lru_cache(maxsize=1)
def small_tokenizer() -> Any:
    """A byte-level BPE (digits split) with the ChatML + tools template, trained once per process."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(tokenizer_corpus(200, 0), trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ADDED_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token=DOC_END,
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=1_000_000,
    )


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
