"""KV storage dtype: the dtype K/V are stored in inside the pool, apart from the compute dtype.

K/V enter the pool converted to the storage dtype; every attention path reads them back and
upcasts to the compute dtype (fp32 math in the kernels) before any arithmetic. bf16 storage
halves the pool's K/V bytes, the checkpoints and the swap files of an fp32 model.

Values: "auto" (bf16 when the compute dtype is fp32 or bf16 and the device supports bf16,
else the model dtype), "model" (the model's compute dtype), "bfloat16", "float16",
"float32", or a floating `torch.dtype`.
"""

from __future__ import annotations

import torch

from agentrt.errors import ConfigError

KV_DTYPE_CHOICES = ("auto", "model", "bfloat16", "float16", "float32")
_NAMED = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
}


def bf16_supported(device: torch.device) -> bool:
    """Whether `device` stores and converts bf16 natively (CPU: yes; CUDA: per the device)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return device.type == "cpu"


def resolve_kv_dtype(
    value: str | torch.dtype | None, compute_dtype: torch.dtype, device: str | torch.device
) -> torch.dtype:
    """The storage dtype for `value` (see the module docstring); None means "model".

    ConfigError for anything else, naming the accepted values.
    """
    if value is None:
        return compute_dtype
    if isinstance(value, torch.dtype):
        if not value.is_floating_point:
            raise ConfigError(
                f"kv_dtype={value} is not a floating dtype: K/V cannot be stored in it",
                hint=f"use one of {', '.join(KV_DTYPE_CHOICES)}",
            )
        return value
    name = str(value).strip().lower().removeprefix("torch.")
    if name == "model":
        return compute_dtype
    if name == "auto":
        bf16_ok = compute_dtype in (torch.float32, torch.bfloat16)
        return torch.bfloat16 if bf16_ok and bf16_supported(torch.device(device)) else compute_dtype
    if name in _NAMED:
        return _NAMED[name]
    raise ConfigError(
        f"unknown kv_dtype {value!r}",
        hint=f"use one of {', '.join(KV_DTYPE_CHOICES)} (auto: bf16 storage where the model "
        "computes in fp32/bf16 and the device supports bf16)",
    )


def dtype_label(dtype: torch.dtype) -> str:
    """'bfloat16' for torch.bfloat16."""
    return str(dtype).removeprefix("torch.")


__all__ = ["KV_DTYPE_CHOICES", "bf16_supported", "dtype_label", "resolve_kv_dtype"]
