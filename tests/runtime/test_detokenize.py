"""Streaming detokenisation never emits half a character and loses nothing."""

from __future__ import annotations

from agentrt.engine.detokenize import IncrementalDetokenizer
from tests.runtime.tokenizer_fixture import CORPUS, byte_tokenizer


def test_deltas_concatenate_to_the_full_text_without_broken_characters():
    """Token-by-token deltas join to decode(all) and none contains U+FFFD."""
    tok = byte_tokenizer()
    for text in CORPUS:
        ids = tok.encode(text)
        assert len(ids) > len(text.encode()) // 4  # multi-byte characters span tokens
        detok = IncrementalDetokenizer(tok)
        deltas = [detok.push(i) for i in ids] + [detok.flush()]
        assert all("\ufffd" not in d for d in deltas)
        assert "".join(deltas) == tok.decode(ids) == text


def test_byte_fallback_tokens_are_held_until_complete():
    """Feeding the single bytes of an emoji yields nothing until the last byte arrives."""
    tok = byte_tokenizer(vocab_size=260)  # nearly pure bytes
    ids = tok.encode("🙂")
    assert len(ids) >= 2
    detok = IncrementalDetokenizer(tok)
    outs = [detok.push(i) for i in ids]
    assert outs[:-1] == [""] * (len(ids) - 1) and outs[-1] == "🙂"


def test_flush_emits_an_incomplete_tail():
    """An unfinished character at the end is flushed (as the replacement character)."""
    tok = byte_tokenizer(vocab_size=260)
    ids = tok.encode("a🙂")
    detok = IncrementalDetokenizer(tok)
    text = "".join(detok.push(i) for i in ids[:-1])
    assert text == "a"
    assert detok.flush() != ""
