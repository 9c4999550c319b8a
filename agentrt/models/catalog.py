"""What `agentrt models ls` and `agentrt doctor` show: each known model's state on this machine."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agentrt.models.prepare import gguf_origin, prepared_dir, read_marker
from agentrt.models.registry import KNOWN_MODELS, known_model, shipped_adapters


@dataclass(frozen=True)
class ModelInfo:
    """One known model: prepared or not, where it lives, and how it serves."""

    name: str
    prepared: bool
    path: str  # the prepared folder (where it will be, when not prepared yet)
    bytes: int | None  # of the prepared folder
    flavour: str  # "DMS adapters (shipped)" or "dense (no adapters shipped)"
    window: int | None  # the shipped adapters' DMS window
    measured_cr: float | None  # the compression the adapters reached when they were trained
    source: str  # where the GGUF came from (prepared) or would come from (not yet)
    license: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def folder_bytes(path: Path) -> int:
    """Total size of the files in a folder (recursively)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def adapter_summary(name: str) -> tuple[str, int | None, float | None]:
    """(flavour, window, measured CR) of the DMS adapters this install ships for `name`."""
    folder = shipped_adapters(name)
    if folder is None:
        return "dense (no adapters shipped)", None, None
    try:
        cfg = json.loads((folder / "dms_config.json").read_text())
    except (OSError, json.JSONDecodeError):
        cfg = {}
    cr = cfg.get("measured_cr")
    lora = cfg.get("lora")
    flavour = "DMS adapters (shipped)"
    if isinstance(lora, dict) and lora.get("rank"):
        flavour = f"DMS adapters + LoRA r{lora['rank']} (shipped)"
    return flavour, cfg.get("dms_window_size"), float(cr) if cr else None


def model_info(name: str, home: Path) -> ModelInfo:
    """The state of known model `name` under `home`."""
    model = known_model(name)
    folder = prepared_dir(name, home)
    marker = read_marker(folder)
    flavour, window, cr = adapter_summary(name)
    return ModelInfo(
        name=name,
        prepared=marker is not None,
        path=str(folder),
        bytes=folder_bytes(folder) if marker is not None else None,
        flavour=flavour,
        window=window,
        measured_cr=cr,
        source=marker.get("origin", "?") if marker is not None else gguf_origin(model, home),
        license=model.license,
    )


def model_infos(home: Path) -> list[ModelInfo]:
    """Every known model's state, by name."""
    return [model_info(name, home) for name in sorted(KNOWN_MODELS)]
