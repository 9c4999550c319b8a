"""Checks of a device and a KV budget that run before any model is loaded.

A bad `--device` or `--kv-budget` is refused in milliseconds with a clear error (exit 2 or
5), not after the weights are read, and never as an allocator traceback.
"""

from __future__ import annotations

import os

import torch

from agentrt.errors import BudgetError, ConfigError

DEVICE_FORMS = "auto, cpu, cuda or cuda:N"


def check_device(device: str | torch.device | None) -> torch.device:
    """The torch device to use ("auto" → cuda when available, else cpu); ConfigError if this
    machine does not have it."""
    if device is None or str(device).strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(str(device).strip().lower() if isinstance(device, str) else device)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"unknown device {device!r}", hint=f"use {DEVICE_FORMS}") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise ConfigError(f"unsupported device {device!r}", hint=f"use {DEVICE_FORMS}")
    if not torch.cuda.is_available():
        raise ConfigError(
            f"device {device!r} was asked for, but this torch build or machine has no CUDA",
            hint="use --device cpu (or auto), or install a CUDA build of torch on a GPU machine",
        )
    count = torch.cuda.device_count()
    if dev.index is not None and not 0 <= dev.index < count:
        raise ConfigError(
            f"device {device!r} does not exist: this machine has {count} CUDA device(s)",
            hint=f"use cuda:0 to cuda:{count - 1}" if count else "use --device cpu",
        )
    return dev


def device_memory(device: torch.device) -> int:
    """Total memory of the device in bytes (physical RAM for the CPU)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[1])
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: let the allocator decide
        return 2**62


def check_kv_budget(budget: str | int, device: torch.device) -> int:
    """A KV budget in bytes: ConfigError if unreadable, BudgetError if zero or larger than
    the device's memory."""
    from agentrt.dms.budget import format_bytes, parse_bytes

    total = parse_bytes(budget)
    if total <= 0:
        raise BudgetError(
            f"kv_budget {budget!r} is zero: the KV pool needs memory",
            hint="pass a size such as 1GiB",
        )
    capacity = device_memory(device)
    if total > capacity:
        raise BudgetError(
            f"kv_budget {budget!r} ({format_bytes(total)}) is more than the "
            f"{format_bytes(capacity)} of memory on {device}",
            hint=f"lower the KV budget to well under {format_bytes(capacity)}",
        )
    return total


def allocation_failed(err: BaseException, what: str, size: str | int) -> BudgetError:
    """The BudgetError for an allocator failure (out of memory) while making `what`."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return BudgetError(
        f"could not allocate the {what} of {size!r}: {first}",
        hint="lower the KV budget, or close other programs using this device's memory",
    )


def is_allocation_error(err: BaseException) -> bool:
    """Whether an exception is the allocator running out of memory."""
    if isinstance(err, torch.OutOfMemoryError | MemoryError):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("allocate" in text or "out of memory" in text)


__all__ = [
    "allocation_failed",
    "check_device",
    "check_kv_budget",
    "device_memory",
    "is_allocation_error",
]
