"""GGUF file → Hugging Face model folder (fp32 safetensors, config, tokenizer, chat template).

transformers reads GGUF (`from_pretrained(dir, gguf_file=...)`), but a model loaded that
way cannot be saved ("The model is quantized with gguf and is not serializable"), and its
model loader needs `accelerate`. This converter uses the same GGUF readers without either
limit: config and tokenizer through `AutoConfig` / `AutoTokenizer` with `gguf_file=`, the
tensors through `load_gguf_checkpoint` (the `gguf` package dequantizes them and transformers
maps the names and undoes llama.cpp's q/k permutation), loaded into a plain model built from
the config and saved with `save_pretrained`. The result equals transformers' own GGUF load.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from agentrt.errors import ModelLoadError


def convert_gguf(gguf: Path, out: Path, *, progress: bool = True) -> None:
    """Write the HF folder of GGUF file `gguf` into the (existing, empty) folder `out`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    require_gguf_package()
    with _progress_bars(progress):
        try:
            config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        except (ValueError, KeyError, OSError) as err:
            raise ModelLoadError(
                f"cannot read {gguf} as a GGUF model: {err}",
                hint="agentrt converts GGUF files of the Llama family",
            ) from err
        config.dtype = torch.float32
        config.__dict__.pop("_model_name_or_path", None)  # the GGUF's title, not a path
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        tensors = load_gguf_checkpoint(
            str(gguf), return_tensors=True, model_to_load=model, torch_dtype=torch.float32
        )["tensors"]
        missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
        tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
        if set(missing) - tied or unexpected:
            raise ModelLoadError(
                f"{gguf}: the GGUF tensors do not match a {config.model_type} model "
                f"(missing {sorted(set(missing) - tied)[:4]}, unexpected {sorted(unexpected)[:4]})"
            )
        model.tie_weights()
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)


def require_gguf_package() -> None:
    """ModelLoadError with the install line when the `gguf` package is missing."""
    try:
        import gguf  # noqa: F401
    except ImportError as err:
        raise ModelLoadError(
            "converting a GGUF model needs the `gguf` package", hint="pip install gguf"
        ) from err


@contextlib.contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    """Show (or hide) transformers' tqdm bars for one call, restoring the setting after."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if before else hf_logging.disable_progress_bar)()
