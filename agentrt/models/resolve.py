"""Which model to serve: --model, else `AGENTRT_MODEL`, else the default model, by name or folder.

A known name (`agentrt models ls`) means its prepared folder under `$AGENTRT_HOME/models/`,
prepared on first use, plus the DMS adapters this install ships for it; anything else is
a model folder or a hub id, served as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentrt.errors import ConfigError
from agentrt.models.registry import KNOWN_MODELS, shipped_adapters

if TYPE_CHECKING:
    import torch

    from agentrt.dms import DMSConfig, DMSModel

DMS_MODES = ("on", "off")


@dataclass(frozen=True)
class ResolvedModel:
    """A model to load: its folder (or hub id), its known name if any, its shipped adapters."""

    path: str  # a local folder, or a hub id
    name: str | None  # the known model's name, when it is one
    adapters: Path | None  # the shipped DMS adapter folder for a known model, if any


def known_name_of(spec: str | Path, home: Path) -> str | None:
    """The known model that `spec` names: its name, or the path of its prepared folder."""
    from agentrt.models.prepare import prepared_dir

    text = str(spec)
    if text in KNOWN_MODELS:
        return text
    path = Path(text).expanduser()
    if not path.is_dir():
        return None
    for name in KNOWN_MODELS:
        if path.resolve() == prepared_dir(name, home).resolve():
            return name
    return None


def resolve(
    spec: str | Path | None, home: str | Path | None = None, *, progress: bool = True
) -> ResolvedModel:
    """Resolve a model spec (None: the configured default), preparing a known model if needed."""
    from agentrt.models.prepare import prepare
    from agentrt.settings import default_model, home_dir

    home = Path(home).expanduser() if home else home_dir()
    spec = spec or default_model()
    name = known_name_of(spec, home)
    if name is None:
        return ResolvedModel(path=str(spec), name=None, adapters=None)
    folder = prepare(name, home, progress=progress)
    return ResolvedModel(path=str(folder), name=name, adapters=shipped_adapters(name))


def load_resolved(
    spec: str | Path | None = None,
    *,
    dms: DMSConfig | Mapping[str, Any] | str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    home: str | Path | None = None,
    progress: bool = True,
    tokenizer: bool = True,
) -> DMSModel:
    """Load the model `spec` names (None: the default) as a DMSModel.

    `dms`: None or "on" serves the model's own DMS (a known model: its shipped adapters);
    "off" serves it dense (no adapters, eviction disabled); a DMSConfig overrides; a mapping
    of some DMSConfig fields (e.g. a task file's `dms: {window_size: 256}`) changes only
    those fields of the model's own config.
    """
    from agentrt.dms import load_model
    from agentrt.dms.config import DMSConfig

    if isinstance(dms, str) and dms not in DMS_MODES:
        raise ConfigError(f"unknown DMS mode {dms!r}", hint="use on or off")
    resolved = resolve(spec, home, progress=progress)
    adapters = resolved.adapters
    config: DMSConfig | None = dms if isinstance(dms, DMSConfig) else None
    if isinstance(dms, Mapping):
        own = _own_config(resolved)
        partial = DMSConfig.from_dict(dict(dms))  # validates the keys and values
        changes = {k: getattr(partial, k[4:] if k.startswith("dms_") else k) for k in dms}
        config = own.replace(**changes) if own is not None else partial
    if dms == "off":
        adapters, config = None, _dense_config(resolved.path)
    return load_model(
        resolved.path,
        dms=config,
        adapters=adapters,
        device=device,
        dtype=dtype,
        tokenizer=tokenizer,
    )


def _own_config(resolved: ResolvedModel) -> Any:
    """The DMS config the model serves with by itself: its shipped adapters' or its folder's."""
    from agentrt.dms.loader import detect_dms, read_adapter_config, resolve_model_dir

    if resolved.adapters is not None:
        return read_adapter_config(resolved.adapters)[0]
    return detect_dms(resolve_model_dir(resolved.path))[0]


def _dense_config(path: str) -> Any:
    """The folder's own DMS config with eviction disabled (None for a plain model)."""
    from agentrt.dms.loader import detect_dms, resolve_model_dir

    file_dms, _ = detect_dms(resolve_model_dir(path))
    return file_dms.replace(disable_eviction=True) if file_dms is not None else None
