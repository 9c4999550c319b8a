"""Tiny models with chat-template tokenizers for the agent-loop tests (no downloads).

Three templates: SmolLM2's (ChatML, ignores `tools=`: the loop puts them in the system
message), a Hermes/Qwen one that renders `tools=` itself, and a Qwen3-style one that strips
the reasoning of earlier assistant turns (history rewriting: deltas must be explicit).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from agentrt.dms import DMSModel
from tests.dms.serving_helpers import tiny_model

# SmolLM2-135M-Instruct's template (tokenizer_config.json), verbatim
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)

HERMES_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n"
    "{%- if messages[0].role == 'system' %}{{ messages[0].content + '\n\n' }}{%- endif %}"
    "# Tools\n<tools>{%- for t in tools %}\n{{ t | tojson }}{%- endfor %}\n</tools>\n"
    'Call a tool as <tool_call>{"name": ..., "arguments": {...}}</tool_call><|im_end|>\n'
    "{%- elif messages[0].role == 'system' %}"
    "{{ '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}{%- endif %}"
    "{%- for m in messages %}{%- if m.role == 'system' %}"
    "{%- elif m.role == 'tool' %}"
    "{{ '<|im_start|>user\n<tool_response>\n' + m.content + '\n</tool_response><|im_end|>\n' }}"
    "{%- else %}{{ '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}{%- endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{%- endif %}"
)

# earlier assistant turns lose their <think>...</think> part (as Qwen3's template does)
REWRITING_TEMPLATE = (
    "{%- for m in messages %}"
    "{%- set c = m.content %}"
    "{%- if m.role == 'assistant' and not loop.last and '</think>' in c %}"
    "{%- set c = c.split('</think>')[-1].lstrip() %}{%- endif %}"
    "{{ '<|im_start|>' + m.role + '\n' + c + '<|im_end|>\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{%- endif %}"
)

TEMPLATES = {
    "smollm2": SMOLLM2_TEMPLATE,
    "hermes": HERMES_TEMPLATE,
    "rewriting": REWRITING_TEMPLATE,
}

CORPUS = [
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n",
    '<tool_call>[{"name": "read_file", "arguments": {"path": "notes.txt"}}]</tool_call>',
    "The quick brown fox jumps over the lazy dog. Answer: 42. The code is 7341.",
    "What is the access code? Read the file and search the text for the word.",
]


@functools.lru_cache(maxsize=4)
def chat_tokenizer(template: str = "smollm2") -> Any:
    """A byte-level BPE tokenizer (trained in-process) with ChatML specials and a template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 8, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=TEMPLATES[template],
        clean_up_tokenization_spaces=False,
    )


def chat_model(template: str = "smollm2", *, max_positions: int = 16384, seed: int = 0) -> DMSModel:
    """A 2-layer random llama with DMS whose vocabulary and template come from `chat_tokenizer`."""
    tok = chat_tokenizer(template)
    base = tiny_model(arch="llama", window=4, offset=5.0, seed=seed)
    base.hf.resize_token_embeddings(len(tok), mean_resizing=False)
    base.hf.config.max_position_embeddings = max_positions
    return DMSModel(base.hf, base.dms, tokenizer=tok)


def save_chat_model(path: Path, template: str = "smollm2", *, max_positions: int = 16384) -> Path:
    """`chat_model` written as an HF folder (config, weights, tokenizer) that agentrt can load."""
    return chat_model(template, max_positions=max_positions).save_pretrained(path)
