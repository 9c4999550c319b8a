"""Weight layout of a model served on the CPU: wide projections stored column-major.

`prepare_cpu_linears` rewrites, in place, the storage of every decoder projection with
out_features ≥ in_features (q, o, MLP gate and up; an untied LM head) to column-major,
the same values in the same [out, in] tensor, and marks every projection with the routine
`agentrt.kernels.cpu_linear` runs it with (the measurements behind the choice are in that
module's docstring). A tied LM head keeps the row-major layout its embedding lookup needs
and is marked for oneDNN. Only fp32 models on the CPU are touched; any code that calls the
modules directly still gets the same results (`F.linear` takes either layout).
"""

from __future__ import annotations

import torch
from torch import nn

from agentrt.kernels.cpu_linear import GEMV, ONEDNN, onednn_linear_available

PATH_ATTR = "_agentrt_cpu_path"  # per-module mark read by `agentrt.dms.projections.linear`


def cpu_path(module: nn.Module) -> str | None:
    """The CPU routine `module` is marked with (None: plain `F.linear`)."""
    return module.__dict__.get(PATH_ATTR)


def prepare_cpu_linears(hf_model: nn.Module) -> int:
    """Lay out and mark the decoder's projections for CPU serving; returns how many changed.

    Idempotent; a no-op for a model that is not fp32 on the CPU or a torch without oneDNN.
    """
    head = getattr(hf_model, "lm_head", None)
    weight = getattr(head, "weight", None)
    if weight is None or weight.device.type != "cpu" or weight.dtype != torch.float32:
        return 0
    if not onednn_linear_available():
        return 0
    changed = 0
    with torch.no_grad():
        for layer in hf_model.model.layers:
            for proj in _projections(layer):
                changed += _mark(proj, GEMV, column=proj.out_features >= proj.in_features)
        if head.weight is hf_model.get_input_embeddings().weight:  # tied: stays row-major
            changed += _mark(head, ONEDNN, column=False)
        else:
            changed += _mark(head, GEMV, column=True)
    return changed


def _projections(layer: nn.Module) -> list[nn.Linear]:
    """The plain `nn.Linear` projections of one decoder layer's attention and MLP."""
    found = []
    for block in (getattr(layer, "self_attn", None), getattr(layer, "mlp", None)):
        if block is None:
            continue
        for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
            proj = getattr(block, name, None)
            if type(proj) is nn.Linear:
                found.append(proj)
    return found


def _mark(proj: nn.Linear, path: str, *, column: bool) -> int:
    """Mark `proj` with routine `path`, its weight stored column-major when `column`;
    1 if anything changed."""
    changed = 0
    if column and not _is_column_major(proj.weight):
        proj.weight.data = proj.weight.data.t().contiguous().t()
        changed = 1
    if cpu_path(proj) != path:
        proj.__dict__[PATH_ATTR] = path
        changed = 1
    return changed


def _is_column_major(w: torch.Tensor) -> bool:
    """True for a 2-D tensor whose columns are contiguous (the transpose of a contiguous one)."""
    return w.dim() == 2 and w.t().is_contiguous()


def undo_cpu_linears(hf_model: nn.Module) -> None:
    """Back to the layout `from_pretrained` gives: every projection row-major, no marks."""
    with torch.no_grad():
        for module in hf_model.modules():
            if type(module) is nn.Linear:
                module.__dict__.pop(PATH_ATTR, None)
                if not module.weight.is_contiguous():
                    module.weight.data = module.weight.data.contiguous()
