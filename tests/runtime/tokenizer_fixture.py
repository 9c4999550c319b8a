"""A small byte-level BPE tokenizer trained in-process (no downloads)."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

CORPUS = [
    "héllo wörld, naïve café — ünïcödé 日本語のテキスト 🙂🚀 ok",
    "the quick brown fox jumps over the lazy dog 12345",
    "Ελληνικά και русский текст, 中文 汉字, emoji 🎉✨",
]


def byte_tokenizer(vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """Byte-level BPE: multi-byte characters span several tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


def save_byte_model(path: Path) -> Path:
    """The tiny qneuron DMS model (window 3) with this byte-level tokenizer, saved at path."""
    from tests.dms.serving_helpers import tiny_model

    model = tiny_model(window=3, offset=5.0)
    tok = byte_tokenizer()
    model.hf.resize_token_embeddings(len(tok))
    model.tokenizer = tok
    model.save_pretrained(path)
    return path
