"""Training checkpoints: `out/checkpoints/checkpoint-N/` = the trained weights + trainer state.

Adapter flavour: only the adapters (`adapters.safetensors` + `dms_config.json`, the
shipped-adapter format of `adapter_files`), kilobytes; the frozen base is never copied.
Q-neuron flavour (every weight trains): a servable model folder.
`trainer_state.pt` holds the number of updates done (which is also the data position), the
optimizer state, the RNG states, the run's config and a fingerprint of the training blocks.
The CR schedule, the data order and the Gumbel noise are pure functions of
(seed, step, micro-step), so this is all a bit-exact resume needs.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import torch

from agentrt.dms.retrofit.adapter_files import save_adapter_folder
from agentrt.errors import CheckpointError

STATE_FILE = "trainer_state.pt"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def checkpoints_dir(out: str | Path) -> Path:
    """Folder of a run's checkpoints."""
    return Path(out) / "checkpoints"


def checkpoint_path(out: str | Path, step: int) -> Path:
    """Folder of the checkpoint taken after `step` updates."""
    return checkpoints_dir(out) / f"checkpoint-{step}"


def list_checkpoints(out: str | Path) -> list[tuple[int, Path]]:
    """(updates done, folder) of every complete checkpoint, oldest first."""
    root = checkpoints_dir(out)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _NAME.match(path.name)
        if match and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def rng_state() -> dict[str, Any]:
    """The global torch RNG states (CPU and every CUDA device)."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned (CUDA states only where CUDA is present)."""
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    out: str | Path,
    step: int,
    model: Any,
    optimizer: torch.optim.Optimizer,
    config: dict[str, Any],
    data: dict[str, Any] | None = None,
) -> Path:
    """Write checkpoint-`step` (weights, then trainer state) via a temp folder and rename.

    Adapter flavour: adapters only; q-neuron flavour: the whole model folder. `data`
    describes the training blocks (count, fingerprint, samples consumed).
    """
    final = checkpoint_path(out, step)
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    if config.get("flavour") == "adapter":
        save_adapter_folder(tmp, model)
    else:
        model.save_pretrained(tmp)
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "rng": rng_state(),
        "config": config,
        "data": data or {},
    }
    torch.save(state, tmp / STATE_FILE)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final


def load_trainer_state(path: Path) -> dict[str, Any]:
    """The trainer state of a checkpoint folder; CheckpointError when unreadable."""
    try:
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure means the checkpoint is unusable
        raise CheckpointError(
            f"cannot read {path / STATE_FILE}: {err}",
            hint="delete that checkpoint folder to resume from the one before it",
        ) from err
    missing = [k for k in ("step", "optimizer", "rng", "config") if k not in state]
    if missing:
        raise CheckpointError(f"{path / STATE_FILE} lacks {', '.join(missing)}")
    return state
