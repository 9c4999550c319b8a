"""The demo tokenizer: byte-level BPE (digits split) trained on task-suite conversations.

`python -m agentrt.demo.tokenizer --out DIR` writes an HF tokenizer folder with the demo
chat template (system/user/assistant/tool roles, tool definitions); see docs/DEMO_MODEL.md.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from agentrt.demo.chat_template import CHAT_TEMPLATE
from agentrt.demo.corpus import DOC_END, tokenizer_corpus

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


def train_tokenizer(texts: Iterable[str], *, vocab_size: int = 2048) -> Any:
    """A PreTrainedTokenizerFast trained on `texts`, with the demo specials and chat template."""
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
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ADDED_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token=DOC_END,
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=1_000_000,
    )


def build_tokenizer(*, vocab_size: int = 2048, documents: int = 2000, seed: int = 0) -> Any:
    """Train the demo tokenizer on `documents` rendered task-suite conversations (seeded)."""
    return train_tokenizer(tokenizer_corpus(documents, seed), vocab_size=vocab_size)


def main(argv: list[str] | None = None) -> None:
    """CLI: train and save the demo tokenizer."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="folder to save the tokenizer to")
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--documents", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    tok = build_tokenizer(vocab_size=args.vocab_size, documents=args.documents, seed=args.seed)
    tok.save_pretrained(args.out)
    print(f"wrote a {len(tok)}-token tokenizer to {args.out}")


if __name__ == "__main__":
    main()
