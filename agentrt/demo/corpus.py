"""The demo model's data recipe: task-suite conversations, rendered and packed (train split seeds).

Every document is one item of a task drawn uniformly from the suite at a prompt length
drawn uniformly from [min_length, room], rendered as a whole conversation (prompt +
reference reply, tool turns included) with the demo chat template, then `<|endoftext|>`.
Seeds come from `item_seed(..., split="train")`, so no evaluated item (split "eval") is
trained on. Run `python -m agentrt.demo.corpus --help` to write a JSONL for `agentrt retrofit`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agentrt.errors import ConfigError
from agentrt.evals.render import render_ids, render_text, token_counter
from agentrt.evals.tasks import TASKS, Item, TokenCounter, item_seed

DOC_END = "<|endoftext|>"
REPLY_RESERVE = 192  # tokens kept free after a prompt for its reference continuation
FOLLOWUP_RESERVE = 64  # more tokens kept free per follow-up question (turn + reply)
MAX_MISSES = 64  # draws for the first document of a block before giving up


def approx_counter(messages: list[dict[str, Any]], tools: list[dict] | None) -> int:
    """A tokenizer-free length estimate (4 characters a token) for the tokenizer's own corpus."""
    chars = sum(len(m["content"]) for m in messages) + (len(json.dumps(tools)) if tools else 0)
    return chars // 4


def sample_length(rng: random.Random, lo: int, hi: int, dist: str = "uniform") -> int:
    """A prompt length in [lo, hi]: uniform, or log-uniform (short documents more often)."""
    hi = max(lo, hi)
    if dist == "loguniform":
        return min(hi, int(round(math.exp(rng.uniform(math.log(lo), math.log(hi))))))
    return rng.randint(lo, hi)


def sample_item(
    rng: random.Random,
    count: TokenCounter,
    *,
    min_length: int,
    max_length: int,
    length_dist: str = "uniform",
    followups: int = 0,
) -> Item:
    """A training item: uniform task, prompt length in [min_length, max_length] (`length_dist`).

    `followups` > 0 asks up to that many more questions about the same document as later
    turns (niah, vt, arith: one per other needle or chain), more retrieval per token.
    """
    task = rng.choice(sorted(TASKS))
    length = sample_length(rng, min_length, max_length, length_dist)
    seed = item_seed(rng.getrandbits(63), task, length, 0, split="train")
    spec = TASKS[task]
    if followups and hasattr(spec, "followups"):
        spec = dataclasses.replace(spec, followups=followups)
    for _ in range(8):
        try:
            return spec.generate(seed, length, count)
        except ConfigError:  # below the task's shortest prompt
            length = int(length * 1.5) + 16
    raise ConfigError(f"cannot fit a {task} prompt into {length} tokens")


def tokenizer_corpus(documents: int, seed: int, max_length: int = 1024) -> Iterator[str]:
    """Rendered conversations (jinja only, no tokenizer) to train the BPE on."""
    from agentrt.demo.chat_template import render

    rng = random.Random(f"tokenizer/{seed}")
    for _ in range(documents):
        item = sample_item(rng, approx_counter, min_length=64, max_length=max_length)
        yield render(item.conversation(), item.tool_list) + DOC_END


def reply_reserve(followups: int = 0) -> int:
    """Tokens kept free after a prompt for its reference reply and `followups` follow-ups."""
    return REPLY_RESERVE + FOLLOWUP_RESERVE * followups


def document_ids(tokenizer: Any, item: Item) -> tuple[list[int], int]:
    """(ids of the whole conversation + <|endoftext|>, length of its prompt part)."""
    ids = render_ids(tokenizer, item.conversation(), item.tool_list, add_generation_prompt=False)
    end = tokenizer.convert_tokens_to_ids(DOC_END)
    return ids + [int(end)], item.prompt_tokens


def training_block(
    tokenizer: Any,
    *,
    seed: int,
    index: int,
    context: int,
    min_length: int = 128,
    loss_on: str = "all",
    length_dist: str = "uniform",
) -> tuple[list[int], list[int]]:
    """(input ids [context], labels [context]) of block `index`: a pure function of its arguments.

    Whole documents are packed while at least min_length + reserve tokens remain (reserve =
    min(192, context / 4), room for the reply); a document that does not fit is skipped
    (an empty block draws again), the rest is padding (label −100). loss_on="assistant"
    also masks every prompt token; length_dist="loguniform" packs more, shorter documents.
    """
    ids, labels, prompt = training_block_parts(
        tokenizer,
        seed=seed,
        index=index,
        context=context,
        min_length=min_length,
        length_dist=length_dist,
    )
    if loss_on == "assistant":
        labels = [-100 if p else lab for lab, p in zip(labels, prompt, strict=True)]
    return ids, labels


def training_block_parts(
    tokenizer: Any,
    *,
    seed: int,
    index: int,
    context: int,
    min_length: int = 128,
    length_dist: str = "uniform",
    followups: int = 0,
) -> tuple[list[int], list[int], list[bool]]:
    """`training_block` with every label kept, plus a flag per position: True = prompt token.

    With `followups` (see `sample_item`) the reply reserve grows (`reply_reserve`).
    """
    rng = random.Random(f"pretrain/{seed}/{index}")
    count = token_counter(tokenizer)
    pad = int(tokenizer.convert_tokens_to_ids(DOC_END))
    reserve = min(reply_reserve(followups), context // 4)
    ids: list[int] = []
    prompt: list[bool] = []
    misses = 0
    while context - len(ids) >= min_length + reserve:
        room = context - len(ids) - reserve
        item = sample_item(
            rng,
            count,
            min_length=min_length,
            max_length=room,
            length_dist=length_dist,
            followups=followups,
        )
        doc, prompt_len = document_ids(tokenizer, item)
        if len(ids) + len(doc) > context:
            misses += 1
            if ids or misses < MAX_MISSES:
                if ids:
                    break
                continue
            raise ConfigError(
                f"no task-suite document fits a {context}-token block ({MAX_MISSES} tries)",
                hint="use a longer context or a smaller min_length",
            )
        ids.extend(doc)
        prompt.extend([True] * prompt_len + [False] * (len(doc) - prompt_len))
    labels = list(ids) + [-100] * (context - len(ids))
    prompt.extend([False] * (context - len(ids)))
    ids.extend([pad] * (context - len(ids)))
    return ids, labels, prompt


def write_jsonl(
    path: Path,
    tokenizer: Any,
    *,
    documents: int,
    seed: int,
    min_length: int,
    max_length: int,
    followups: int = 0,
) -> Path:
    """`{"text": conversation}` lines (rendered with the template) for `agentrt retrofit --data`."""
    rng = random.Random(f"retrofit/{seed}")
    count = token_counter(tokenizer)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for _ in range(documents):
            item = sample_item(
                rng, count, min_length=min_length, max_length=max_length, followups=followups
            )
            text = render_text(
                tokenizer, item.conversation(), item.tool_list, add_generation_prompt=False
            )
            out.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    """CLI: write retrofit data from the demo tokenizer."""
    from transformers import AutoTokenizer

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokenizer", required=True, help="folder with the demo tokenizer")
    parser.add_argument("--out", required=True, type=Path, help="JSONL file to write")
    parser.add_argument("--documents", type=int, default=2000)
    parser.add_argument("--min-length", type=int, default=256)
    parser.add_argument(
        "--max-length", type=int, default=1856, help="prompt tokens (≤ seq_len − reply)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--followups", type=int, default=0, help="extra questions per document (later turns)"
    )
    args = parser.parse_args(argv)
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    write_jsonl(
        args.out,
        tok,
        documents=args.documents,
        seed=args.seed,
        min_length=args.min_length,
        max_length=args.max_length,
        followups=args.followups,
    )
    print(f"wrote {args.documents} documents to {args.out}")


if __name__ == "__main__":
    main()
