"""Writes a tiny Llama GGUF with the `gguf` package: F16, Q8_0 and Q4_1 tensors, a BPE tokenizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
HIDDEN, FFN, LAYERS, HEADS, KV_HEADS = 64, 128, 2, 4, 2


def byte_alphabet() -> list[str]:
    """GPT-2's byte-to-unicode table (the 256 single-byte tokens of a byte-level BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_tiny_gguf(path: Path, *, seed: int = 0) -> Path:
    """A 2-layer llama (hidden 64, 4 query / 2 KV heads) with tied embeddings, random weights."""
    import gguf
    from gguf import GGMLQuantizationType as Q

    rng = np.random.default_rng(seed)
    tokens = SPECIALS + byte_alphabet() + ["Ġt", "he", "Ġthe"]
    merges = ["Ġ t", "h e", "Ġt he"]
    types = [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny llama")
    w.add_block_count(LAYERS)
    w.add_context_length(256)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_chat_template(CHAT_TEMPLATE)

    def add(name: str, shape: tuple[int, ...], qtype: Q) -> None:
        data = (rng.standard_normal(shape) * 0.2).astype(np.float32)
        if qtype == Q.F32:
            w.add_tensor(name, data)
        elif qtype == Q.F16:
            w.add_tensor(name, data.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)

    head_dim = HIDDEN // HEADS
    add("token_embd.weight", (len(tokens), HIDDEN), Q.F16)
    for i in range(LAYERS):
        add(f"blk.{i}.attn_norm.weight", (HIDDEN,), Q.F32)
        add(f"blk.{i}.attn_q.weight", (HEADS * head_dim, HIDDEN), Q.Q8_0)
        add(f"blk.{i}.attn_k.weight", (KV_HEADS * head_dim, HIDDEN), Q.Q8_0)
        add(f"blk.{i}.attn_v.weight", (KV_HEADS * head_dim, HIDDEN), Q.Q4_1)
        add(f"blk.{i}.attn_output.weight", (HIDDEN, HEADS * head_dim), Q.F16)
        add(f"blk.{i}.ffn_norm.weight", (HIDDEN,), Q.F32)
        add(f"blk.{i}.ffn_gate.weight", (FFN, HIDDEN), Q.Q4_1)
        add(f"blk.{i}.ffn_up.weight", (FFN, HIDDEN), Q.Q8_0)
        add(f"blk.{i}.ffn_down.weight", (HIDDEN, FFN), Q.Q4_1)
    add("output_norm.weight", (HIDDEN,), Q.F32)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
