"""The one place that reads `AGENTRT_*` environment variables and derives user paths."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from agentrt.errors import ConfigError
from agentrt.models.registry import DEFAULT_MODEL

ENV_HOME = "AGENTRT_HOME"
ENV_DB = "AGENTRT_DB"
ENV_MODEL = "AGENTRT_MODEL"
ENV_DEVICE = "AGENTRT_DEVICE"
ENV_KERNELS = "AGENTRT_KERNELS"
ENV_KEEP = "AGENTRT_KEEP_CHECKPOINTS"
ENV_KV_DTYPE = "AGENTRT_KV_DTYPE"
DEFAULT_KEEP_CHECKPOINTS = 3
# KV storage dtypes by name (agentrt.dms.kv_dtype resolves them; kept here torch-free for the CLI).
KV_DTYPES = ("auto", "model", "bfloat16", "float16", "float32")
DEFAULT_KV_DTYPE = "auto"

_DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Settings:
    """Resolved user settings: where state lives and which model/device to use by default."""

    home: Path
    db_url: str
    model: str  # a known model name (docs/MODELS.md), a model folder or a hub id
    device: str
    keep_checkpoints: int | None = DEFAULT_KEEP_CHECKPOINTS  # restore points kept per session

    @property
    def checkpoint_dir(self) -> Path:
        """Folder of checkpoint blobs (created on first write, never here)."""
        return self.home / "checkpoints"


def default_model() -> str:
    """The model to serve when none is given: `$AGENTRT_MODEL`, else `smollm2-135m-instruct`."""
    return os.environ.get(ENV_MODEL) or DEFAULT_MODEL


def home_dir() -> Path:
    """`$AGENTRT_HOME`, default `~/.agentrt` (not created here)."""
    raw = os.environ.get(ENV_HOME)
    return Path(raw).expanduser() if raw else Path.home() / ".agentrt"


def keep_checkpoints() -> int | None:
    """`$AGENTRT_KEEP_CHECKPOINTS`: restore points kept per session (default 3; `all`: never prune)."""
    raw = os.environ.get(ENV_KEEP, "").strip().lower()
    if not raw:
        return DEFAULT_KEEP_CHECKPOINTS
    if raw == "all":
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(
            f"{ENV_KEEP}={raw!r} is not a number of checkpoints to keep",
            hint="set it to a whole number ≥ 1, or `all` to never prune automatically",
        )
    return int(raw)


def kv_dtype_setting() -> str:
    """`$AGENTRT_KV_DTYPE`: the KV storage dtype engines use when none is given (default auto)."""
    raw = os.environ.get(ENV_KV_DTYPE, "").strip().lower()
    if not raw:
        return DEFAULT_KV_DTYPE
    if raw not in KV_DTYPES:
        raise ConfigError(
            f"{ENV_KV_DTYPE}={raw!r} is not a KV storage dtype",
            hint=f"set it to one of {', '.join(KV_DTYPES)} (auto: bf16 storage where the "
            "model computes in fp32/bf16 and the device supports bf16)",
        )
    return raw


def load_settings(
    *,
    home: str | None = None,
    db: str | None = None,
    model: str | None = None,
    device: str | None = None,
) -> Settings:
    """Resolve settings with precedence: explicit argument (CLI flag) > environment > default.

    The default model is `smollm2-135m-instruct` (prepared on first use, docs/MODELS.md).
    """
    home_path = Path(home).expanduser() if home else home_dir()
    db_url = db or os.environ.get(ENV_DB) or f"sqlite:///{home_path / 'agentrt.db'}"
    model_name = model or default_model()
    dev = (device or os.environ.get(ENV_DEVICE) or "auto").lower()
    if dev not in _DEVICES and not dev.startswith("cuda:"):
        raise ConfigError(
            f"unknown device {dev!r} (from {'--device' if device else ENV_DEVICE})",
            hint="use one of auto, cpu, cuda, cuda:N",
        )
    return Settings(
        home=home_path,
        db_url=db_url,
        model=model_name,
        device=dev,
        keep_checkpoints=keep_checkpoints(),
    )
