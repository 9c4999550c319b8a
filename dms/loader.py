"""`load_model`: any local folder or hub id of the Llama family → `DMSModel`, flavour checked."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from agentrt.dms.adapters import (
    ADAPTER_MARKER,
    adapter_state,
    attach_adapters,
    is_trained_name,
    load_adapter_state,
)
from agentrt.dms.architecture import check_supported
from agentrt.dms.config import DMSConfig
from agentrt.dms.lora import is_lora_name, lora_problems, merge_lora, split_lora
from agentrt.dms.model import DMSModel
from agentrt.errors import ModelLoadError

log = logging.getLogger(__name__)


def resolve_model_dir(name_or_path: str | Path) -> Path:
    """A local folder as is; a hub id through the local HF cache (or a download when online)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelLoadError(f"{path} is a file, not a model folder")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(
            str(name_or_path),
            allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"],
        )
    except Exception as err:  # noqa: BLE001 - any hub failure means "cannot find the model"
        raise ModelLoadError(
            f"cannot find model {str(name_or_path)!r}: not a local folder and the hub lookup failed "
            f"({type(err).__name__}: {err})",
            hint="pass the path of a local Hugging Face model folder",
        ) from err
    return Path(local)


def safetensor_keys(model_dir: Path) -> set[str]:
    """Names of all tensors in the folder's safetensors files (header only, no data read)."""
    from safetensors import safe_open

    keys: set[str] = set()
    for file in sorted(model_dir.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as handle:
                keys.update(handle.keys())
        except Exception as err:  # noqa: BLE001 - a broken header is a load error
            raise ModelLoadError(f"cannot read weights file {file}: {err}") from err
    return keys


def read_adapter_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    """All `dms_proj_alpha*` tensors of the folder's safetensors files."""
    from safetensors import safe_open

    out: dict[str, torch.Tensor] = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                if ADAPTER_MARKER in key:
                    out[key] = handle.get_tensor(key)
    return out


def detect_dms(model_dir: Path) -> tuple[DMSConfig | None, bool]:
    """(DMS config from config.json or None, whether adapter weights are present); refuses mismatches."""
    cfg_file = model_dir / "config.json"
    try:
        raw = json.loads(cfg_file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"cannot read {cfg_file}: {err}") from err
    dms_keys = {k: v for k, v in raw.items() if k.startswith("dms_")}
    file_dms = DMSConfig.from_dict(dms_keys, strict=False) if dms_keys else None
    has_adapter_weights = any(ADAPTER_MARKER in k for k in safetensor_keys(model_dir))
    if file_dms is not None and file_dms.separate_alpha and not has_adapter_weights:
        raise ModelLoadError(
            f"{model_dir}: config.json says dms_separate_alpha=true (adapter flavour) but the "
            "weights have no dms_proj_alpha tensors",
            hint="the checkpoint is incomplete; transformers would silently random-initialise them",
        )
    if has_adapter_weights and (file_dms is None or not file_dms.separate_alpha):
        raise ModelLoadError(
            f"{model_dir}: the weights contain dms_proj_alpha adapters but config.json "
            f"{'has no dms_* keys' if file_dms is None else 'says dms_separate_alpha=false'}",
            hint="set dms_separate_alpha: true in config.json for an adapter-flavour checkpoint",
        )
    return file_dms, has_adapter_weights


def merge_dms(file_dms: DMSConfig | None, override: DMSConfig | None) -> DMSConfig | None:
    """The config to serve with: the caller's override, checked against the checkpoint's flavour."""
    if override is None:
        return file_dms
    if file_dms is not None and override.separate_alpha != file_dms.separate_alpha:
        raise ModelLoadError(
            f"the checkpoint is {file_dms.flavour}-flavour DMS but the given config asks for "
            f"{override.flavour}",
            hint="drop dms_separate_alpha from your override",
        )
    return override


def read_supported_config(model_dir: Path) -> Any:
    """The folder's transformers config; ModelLoadError if unreadable or not a supported decoder."""
    from transformers import AutoConfig

    try:
        hf_config = AutoConfig.from_pretrained(model_dir)
    except Exception as err:  # noqa: BLE001 - unreadable or unknown config
        raise ModelLoadError(f"cannot read the model config in {model_dir}: {err}") from err
    problems = check_supported(hf_config)
    if problems:
        raise ModelLoadError(
            "; ".join(problems), hint="agentrt serves Llama, Mistral, Qwen2 and Qwen3 decoders"
        )
    return hf_config


def default_dtype(device: torch.device) -> torch.dtype:
    """fp32 on CPU, bf16 on CUDA."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load_model(
    name_or_path: str | Path,
    *,
    dms: DMSConfig | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    tokenizer: bool = True,
    adapters: str | Path | None = None,
) -> DMSModel:
    """Load a Llama/Mistral/Qwen2/Qwen3 checkpoint (plain or DMS, either flavour) as a DMSModel.

    `adapters`: a folder of DMS adapters for a plain checkpoint (`adapters.safetensors` +
    `dms_config.json`, see `read_adapter_folder`), attached and loaded after the weights.
    """
    from transformers import AutoModelForCausalLM

    model_dir = resolve_model_dir(name_or_path)
    dev = torch.device(device)
    read_supported_config(model_dir)
    file_dms, has_adapter_weights = detect_dms(model_dir)
    extra: dict[str, torch.Tensor] = {}
    lora: dict[str, torch.Tensor] = {}
    lora_meta: dict[str, Any] | None = None
    if adapters is not None:
        if file_dms is not None:
            raise ModelLoadError(
                f"{model_dir} is already a DMS checkpoint; it takes no separate adapters",
                hint="serve the folder as it is, or pass a plain model with the adapters",
            )
        file_dms, extra, lora_meta = read_adapter_folder(Path(adapters))
        extra, lora = split_lora(extra)
        has_adapter_weights = True
    served = merge_dms(file_dms, dms)
    try:
        with _quiet_transformers():  # adapter tensors are "unexpected" to HF; we load them below
            hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype or default_dtype(dev))
    except Exception as err:  # noqa: BLE001
        raise ModelLoadError(f"cannot load weights from {model_dir}: {err}") from err
    hf.to(dev).eval()
    if served is not None and served.separate_alpha:
        attach_adapters(hf)
        if has_adapter_weights:
            source = model_dir if adapters is None else Path(adapters)
            tensors = read_adapter_tensors(model_dir) if adapters is None else extra
            check_adapter_tensors(hf, tensors, source)
            missing = load_adapter_state(hf, tensors)
            if missing:
                raise ModelLoadError(f"{source}: adapter tensors missing: {missing[:4]}…")
        else:
            log.info("retrofitting %s with zero-initialised DMS adapters", model_dir)
    delta = _merge_lora(hf, lora, lora_meta, Path(adapters)) if lora_meta and served else None
    tok = _load_tokenizer(model_dir) if tokenizer else None
    model = DMSModel(hf, served, tokenizer=tok)
    model.source_dir = model_dir
    model.weight_delta = delta
    return model


def _merge_lora(
    hf: Any, tensors: dict[str, torch.Tensor], meta: dict[str, Any], folder: Path
) -> str:
    """Fold an adapter folder's LoRA into the weights; returns its digest (for fingerprints)."""
    problems = lora_problems(hf, tensors, int(meta["rank"]))
    if problems:
        raise ModelLoadError(
            f"{folder}: the LoRA tensors do not fit the model ({'; '.join(problems)})",
            hint="the folder was trained on a different model; pass adapters trained on this one",
        )
    return merge_lora(hf, tensors, float(meta["scale"]))


def _unreadable_adapters(folder: Path, err: Exception) -> ModelLoadError:
    """The error for an adapter folder whose config or tensors cannot be read."""
    return ModelLoadError(
        f"cannot read the DMS adapters in {folder}: {err}",
        hint="an adapter folder holds dms_config.json and adapters.safetensors",
    )


def read_adapter_config(folder: Path) -> tuple[DMSConfig, dict[str, Any]]:
    """(DMS config, the raw mapping) of an adapter folder's dms_config.json, tensors unread."""
    from agentrt.errors import ConfigError

    cfg_file = folder / "dms_config.json"
    try:
        raw = json.loads(cfg_file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise _unreadable_adapters(folder, err) from err
    try:
        cfg = DMSConfig.from_dict({k: v for k, v in raw.items() if k.startswith("dms_")})
    except ConfigError as err:
        raise ModelLoadError(f"{cfg_file}: {err.message}", hint=err.hint) from err
    if not cfg.separate_alpha:
        raise ModelLoadError(
            f"{cfg_file}: dms_separate_alpha must be true for an adapter folder",
            hint="adapter folders hold the adapter flavour (dms_proj_alpha tensors)",
        )
    return cfg, raw


def read_adapter_folder(
    folder: Path,
) -> tuple[DMSConfig, dict[str, torch.Tensor], dict[str, Any] | None]:
    """(DMS config, adapter tensors, LoRA rank/scale or None) of an adapter folder:
    dms_config.json + adapters.safetensors."""
    from safetensors.torch import load_file

    cfg, raw = read_adapter_config(folder)
    weights = folder / "adapters.safetensors"
    try:
        tensors = load_file(str(weights))
    except (OSError, safetensors_error()) as err:
        raise _unreadable_adapters(folder, err) from err
    stray = sorted(k for k in tensors if not is_trained_name(k))
    if stray:
        raise ModelLoadError(f"{weights}: holds tensors that are not DMS adapters: {stray[:4]}")
    lora_meta = raw.get("lora")
    has_lora = any(is_lora_name(k) for k in tensors)
    if has_lora != bool(lora_meta) or (
        lora_meta
        and not (
            isinstance(lora_meta, dict)
            and isinstance(lora_meta.get("rank"), int)
            and isinstance(lora_meta.get("scale"), int | float)
        )
    ):
        raise ModelLoadError(
            f"{folder}: LoRA tensors and the `lora` entry of dms_config.json disagree",
            hint='a folder with dms_lora_* tensors needs "lora": {"rank": R, "scale": S}',
        )
    return cfg, tensors, lora_meta


def safetensors_error() -> type[Exception]:
    """The exception class safetensors raises on a corrupt file."""
    from safetensors import SafetensorError

    return SafetensorError


def check_adapter_tensors(hf: Any, tensors: dict[str, torch.Tensor], model_dir: Path) -> None:
    """Refuse adapter tensors the model has no slot for, or whose shape differs from its slot."""
    own = adapter_state(hf)
    unexpected = sorted(k for k in tensors if k not in own)
    wrong = [
        f"{k} {tuple(t.shape)} (expected {tuple(own[k].shape)})"
        for k, t in sorted(tensors.items())
        if k in own and t.shape != own[k].shape
    ]
    problems = []
    if unexpected:
        problems.append(f"unexpected: {', '.join(unexpected[:4])}")
    if wrong:
        problems.append(f"wrong shape: {', '.join(wrong[:4])}")
    if problems:
        raise ModelLoadError(
            f"{model_dir}: the dms_proj_alpha adapter tensors do not fit the model ("
            + "; ".join(problems)
            + ")",
            hint="expected per layer dms_proj_alpha.weight [num_key_value_heads, hidden_size] "
            "(.bias only with attention_bias) and dms_proj_alpha_norm.weight [hidden_size]",
        )


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report for one call, restoring its verbosity after."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _load_tokenizer(model_dir: Path) -> Any:
    if not any((model_dir / n).exists() for n in ("tokenizer.json", "tokenizer_config.json")):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_dir)
    except Exception as err:  # noqa: BLE001
        raise ModelLoadError(f"cannot load the tokenizer in {model_dir}: {err}") from err
