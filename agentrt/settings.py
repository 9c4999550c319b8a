"""The one place that reads `AGENTRT_*` environment variables and derives user paths."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from agentrt.errors import ConfigError

ENV_HOME = "AGENTRT_HOME"
ENV_DB = "AGENTRT_DB"
ENV_MODEL = "AGENTRT_MODEL"
ENV_DEVICE = "AGENTRT_DEVICE"
ENV_KERNELS = "AGENTRT_KERNELS"

_DEVICES = ("auto", "cpu", "cuda")
BUNDLED_MODEL = "data/demo-model"  # inside the agentrt package: the demo model (docs/DEMO_MODEL.md)


@dataclass(frozen=True)
class Settings:
    """Resolved user settings: where state lives and which model/device to use by default."""

    home: Path
    db_url: str
    model: str | None
    device: str

    @property
    def checkpoint_dir(self) -> Path:
        """Folder of checkpoint blobs (created on first write, never here)."""
        return self.home / "checkpoints"


def bundled_model() -> Path | None:
    """The folder of the demo model shipped inside the package, or None if this install lacks it."""
    folder = Path(__file__).resolve().parent / BUNDLED_MODEL
    return folder if (folder / "config.json").is_file() else None


def default_model() -> str | None:
    """The model to serve when none is given: `$AGENTRT_MODEL`, else the bundled demo model."""
    demo = bundled_model()
    return os.environ.get(ENV_MODEL) or (str(demo) if demo else None)


def home_dir() -> Path:
    """`$AGENTRT_HOME`, default `~/.agentrt` (not created here)."""
    raw = os.environ.get(ENV_HOME)
    return Path(raw).expanduser() if raw else Path.home() / ".agentrt"


def load_settings(
    *,
    home: str | None = None,
    db: str | None = None,
    model: str | None = None,
    device: str | None = None,
) -> Settings:
    """Resolve settings with precedence: explicit argument (CLI flag) > environment > default.

    The default model is the bundled demo model (when this install ships it).
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
    return Settings(home=home_path, db_url=db_url, model=model_name, device=dev)
