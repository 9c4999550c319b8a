"""Run setup: device and autocast, early model checks, tokenizer, student/teacher, optimizer."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from agentrt.dms.adapters import is_trained_name
from agentrt.dms.loader import load_model
from agentrt.dms.lora import attach_lora, is_lora_name
from agentrt.dms.model import DMSModel
from agentrt.dms.retrofit.config import RetrofitConfig
from agentrt.errors import ConfigError, ModelLoadError

log = logging.getLogger(__name__)

BETAS = (0.9, 0.95)  # NVIDIA's recipe: AdamW, no weight decay, clip 1.0, constant LR
MAX_GRAD_NORM = 1.0


def resolve_device(name: str) -> torch.device:
    """`auto` → cuda when available, else cpu; a CUDA device without CUDA is a ConfigError."""
    name = name.lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but CUDA is not available", hint="use --device cpu")
    return torch.device(name)


def autocast_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast compute dtype (None = plain fp32); weights stay fp32 either way."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return torch.bfloat16 if name == "bfloat16" else None


def check_model_config(model_dir: Path, cfg: RetrofitConfig) -> Any:
    """Refuse unsupported architectures and seq_len beyond the context before loading weights."""
    from agentrt.dms.loader import read_supported_config

    hf_config = read_supported_config(model_dir)
    context = getattr(hf_config, "max_position_embeddings", None)
    if context and cfg.seq_len > context:
        raise ConfigError(
            f"seq_len={cfg.seq_len} is longer than the model's context "
            f"(max_position_embeddings={context})",
            hint=f"use seq_len ≤ {context}",
        )
    if context and cfg.eval_seq_len > context:
        raise ConfigError(
            f"eval_seq_len={cfg.eval_seq_len} is longer than the model's context "
            f"(max_position_embeddings={context})",
            hint=f"use eval_seq_len ≤ {context}",
        )
    return hf_config


def load_tokenizer(model_dir: Path) -> Any:
    """The model folder's tokenizer (needed to tokenise the data)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_dir)
    except Exception as err:  # noqa: BLE001
        raise ModelLoadError(
            f"cannot load a tokenizer from {model_dir}: {err}",
            hint="retrofit needs the model's tokenizer files (tokenizer.json or similar)",
        ) from err


def load_student(
    source: Path, cfg: RetrofitConfig, device: torch.device, tokenizer: Any
) -> DMSModel:
    """The student in fp32 (master weights); a plain adapter-flavour model gets zero adapters,
    and a zero-delta LoRA on q/k/v/o when `lora_rank` asks for one."""
    model = load_model(source, dms=cfg.dms_config(), device=device, dtype=torch.float32)
    if model.tokenizer is None:
        model.tokenizer = tokenizer
    if cfg.lora_rank:
        attach_lora(model.hf, cfg.lora_rank, cfg.lora_scale, seed=cfg.seed)
    mark_trainable(model.hf, cfg.flavour)
    return model


def mark_trainable(hf: nn.Module, flavour: str) -> list[nn.Parameter]:
    """Set requires_grad (adapter: dms_proj_alpha* and any LoRA; qneuron: all); returns them."""
    trainable = []
    for name, param in hf.named_parameters():
        train = flavour == "qneuron" or is_trained_name(name)
        param.requires_grad_(train)
        if train:
            trainable.append(param)
    if not trainable:
        raise ModelLoadError(f"the {flavour}-flavour model has no trainable parameters")
    return trainable


def frozen_teacher(student: DMSModel | None, model_dir: Path, device: torch.device) -> DMSModel:
    """The q-neuron teacher: a frozen dense copy of the starting model (no channel zeroing).

    From a fresh student it is a deep copy of its weights; when resuming (student None) the
    starting model is loaded again from `model_dir`.
    """
    if student is not None:
        hf = copy.deepcopy(student.hf)
    else:
        hf = load_model(model_dir, device=device, dtype=torch.float32, tokenizer=False).hf
    for param in hf.parameters():
        param.requires_grad_(False)
    return DMSModel(hf.eval(), None)


def make_optimizer(
    params: list[nn.Parameter],
    lr: float,
    lora: list[nn.Parameter] | None = None,
    lora_lr: float = 0,
) -> torch.optim.Optimizer:
    """AdamW with NVIDIA's settings (betas 0.9/0.95, no weight decay); LoRA in its own group."""
    groups: list[dict] = [{"params": params, "lr": lr}]
    if lora:
        groups.append({"params": lora, "lr": lora_lr})
    return torch.optim.AdamW(groups, lr=lr, betas=BETAS, weight_decay=0.0)


def split_trainable(hf: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(trainable parameters that are not LoRA, the LoRA ones), in module order."""
    named = [(n, p) for n, p in hf.named_parameters() if p.requires_grad]
    return [p for n, p in named if not is_lora_name(n)], [p for n, p in named if is_lora_name(n)]


def out_of_memory_error() -> tuple[type[BaseException], ...]:
    """The exception types torch raises when a device runs out of memory."""
    types: list[type[BaseException]] = []
    for owner, name in ((torch, "OutOfMemoryError"), (torch.cuda, "OutOfMemoryError")):
        cls = getattr(owner, name, None)
        if isinstance(cls, type) and cls not in types:
            types.append(cls)
    return tuple(types)
