"""Adapter-only folders: the trained `dms_proj_alpha*` tensors and their DMS config, no base.

A folder holds `adapters.safetensors` (fp32, `model.layers.{i}.self_attn.dms_proj_alpha_norm
.weight` [hidden] and `…dms_proj_alpha.weight` [num_kv_heads, hidden], `.bias` only with
attention_bias; with a LoRA also `…self_attn.{q,k,v,o}_proj.dms_lora_{a,b}`), `dms_config.json`
(the adapter-flavour DMS keys, `measured_cr` when known, `lora` {rank, scale, targets} with
a LoRA) and, for a finished run, `retrofit_report.json`. It is kilobytes to a few MB: the
base model stays where it is and the adapters are loaded onto it (serving merges a LoRA
into the weights, training and evaluation attach it: `agentrt.dms.lora`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from agentrt.dms.adapters import adapter_state, load_adapter_state
from agentrt.dms.config import DMSConfig
from agentrt.dms.lora import attach_lora, is_lora_name, lora_info
from agentrt.dms.model import DMSModel
from agentrt.errors import CheckpointError

ADAPTER_FILE = "adapters.safetensors"
DMS_CONFIG_FILE = "dms_config.json"
DMS_KEYS = (
    "dms_separate_alpha",
    "dms_window_size",
    "dms_alpha_scale",
    "dms_initial_alpha_offset",
    "dms_alpha_per",
    "dms_tau",
)


def dms_config_dict(
    dms: DMSConfig, measured_cr: float | None = None, lora: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The `dms_config.json` mapping of an adapter-flavour config (+ measured_cr, LoRA info)."""
    values = dms.to_hf_dict()
    out: dict[str, Any] = {key: values[key] for key in DMS_KEYS}
    out["dms_separate_alpha"] = True
    if measured_cr is not None:
        out["measured_cr"] = float(measured_cr)
    if lora is not None:
        out["lora"] = lora
    return out


def save_adapter_folder(
    path: str | Path,
    model: DMSModel,
    *,
    measured_cr: float | None = None,
    report: dict[str, Any] | None = None,
) -> Path:
    """Write the model's adapters, DMS config (and report) into `path`; returns it."""
    from safetensors.torch import save_file

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {
        k: v.detach().to("cpu", torch.float32).contiguous()
        for k, v in adapter_state(model.hf).items()
    }
    save_file(tensors, str(out / ADAPTER_FILE), metadata={"format": "pt"})
    text = json.dumps(dms_config_dict(model.dms, measured_cr, lora_info(model.hf)), indent=2)
    text += "\n"
    (out / DMS_CONFIG_FILE).write_text(text, encoding="utf-8")
    if report is not None:
        (out / "retrofit_report.json").write_text(
            json.dumps(report, indent=2) + "\n", encoding="utf-8"
        )
    return out


def is_adapter_folder(path: str | Path) -> bool:
    """True when `path` holds an adapters.safetensors."""
    return (Path(path) / ADAPTER_FILE).is_file()


def read_adapter_folder(path: str | Path) -> tuple[dict[str, torch.Tensor], DMSConfig | None]:
    """(adapter tensors, DMS config or None) of a folder; CheckpointError when unreadable."""
    from safetensors.torch import load_file

    folder = Path(path)
    file = folder / ADAPTER_FILE
    if not file.is_file():
        raise CheckpointError(
            f"{folder} has no {ADAPTER_FILE}",
            hint="pass a folder written by `agentrt retrofit` (out/adapters or a checkpoint)",
        )
    try:
        tensors = load_file(str(file))
    except Exception as err:  # noqa: BLE001 - a broken file is a checkpoint problem
        raise CheckpointError(f"cannot read {file}: {err}") from err
    dms = None
    cfg_file = folder / DMS_CONFIG_FILE
    if cfg_file.is_file():
        raw = json.loads(cfg_file.read_text(encoding="utf-8"))
        dms = DMSConfig.from_dict({k: v for k, v in raw.items() if k.startswith("dms_")})
    return tensors, dms


def read_lora_meta(path: str | Path) -> dict[str, Any] | None:
    """The `lora` entry ({rank, scale, targets}) of a folder's dms_config.json, if any."""
    cfg_file = Path(path) / DMS_CONFIG_FILE
    if not cfg_file.is_file():
        return None
    return json.loads(cfg_file.read_text(encoding="utf-8")).get("lora")


def apply_adapter_folder(model: DMSModel, path: str | Path) -> None:
    """Copy a folder's adapter tensors into an adapter-flavour model (shapes checked).

    A folder with a LoRA attaches one (as training has it, switchable for the dense teacher)
    when the model has none; a folder without one leaves an attached LoRA as it is (a LoRA
    run starting from adapter-only weights).
    """
    from agentrt.dms.loader import check_adapter_tensors

    tensors, _ = read_adapter_folder(path)
    meta = read_lora_meta(path)
    if meta and lora_info(model.hf) is None:
        attach_lora(model.hf, int(meta["rank"]), float(meta["scale"]))
    check_adapter_tensors(model.hf, tensors, Path(path))
    missing = load_adapter_state(model.hf, tensors)
    if not any(is_lora_name(k) for k in tensors):
        missing = [k for k in missing if not is_lora_name(k)]
    if missing:
        raise CheckpointError(
            f"{path}: adapter tensors missing: {', '.join(missing[:4])}",
            hint="the folder was written for a model with a different number of layers",
        )
