"""Backend choice for the kernels: Triton on CUDA, the torch reference elsewhere."""

from __future__ import annotations

import importlib.util
import os
from typing import Literal

import torch

from agentrt.kernels._validate import MAX_HEAD_DIM, MIN_HEAD_DIM, triton_head_dim_ok

Backend = Literal["triton", "reference"]
MODES = ("auto", "triton", "reference")


def backend_for(tensor: torch.Tensor, head_dim: int | None = None) -> Backend:
    """Pick the backend for an op whose data lives where `tensor` lives.

    `AGENTRT_KERNELS` (auto|triton|reference, default auto) is read here and nowhere else:
    auto -> triton for CUDA tensors when triton is installed and its tiles take `head_dim`,
    else reference; triton -> always triton (on CPU only under `TRITON_INTERPRET=1`; a
    head_dim the tiles cannot take is refused); reference -> always the pure-torch reference.
    """
    mode = os.environ.get("AGENTRT_KERNELS", "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise ValueError(f"AGENTRT_KERNELS must be one of {'|'.join(MODES)}, got {mode!r}")
    if mode == "reference":
        return "reference"
    fits = head_dim is None or triton_head_dim_ok(head_dim)
    if mode == "triton":
        if not fits:
            raise ValueError(
                f"AGENTRT_KERNELS=triton but head_dim {head_dim} is outside the Triton kernels' "
                f"range [{MIN_HEAD_DIM}, {MAX_HEAD_DIM}]; use AGENTRT_KERNELS=auto (the torch "
                "reference serves any head_dim)"
            )
        if tensor.is_cuda or os.environ.get("TRITON_INTERPRET", "0") == "1":
            return "triton"
        raise ValueError(
            f"AGENTRT_KERNELS=triton but the tensor is on {tensor.device}: Triton needs CUDA "
            "tensors, or TRITON_INTERPRET=1 to run the kernels in the CPU interpreter; "
            "use AGENTRT_KERNELS=auto or reference on CPU"
        )
    if fits and tensor.is_cuda and importlib.util.find_spec("triton") is not None:
        return "triton"
    return "reference"


def torch_path() -> Literal["sdpa", "reference"]:
    """Which torch path serves prefill and decode attention and slot writes off CUDA.

    `AGENTRT_KERNELS=reference` keeps the pure-torch references (the test oracles);
    otherwise the fused-SDPA paths (`agentrt.kernels._dms_prefill_sdpa`,
    `agentrt.kernels._paged_decode_sdpa`), same semantics, no float score matrices, and
    slot writes as indexed copies on flat views (`agentrt.kernels._kv_slots_torch`).
    """
    mode = os.environ.get("AGENTRT_KERNELS", "auto").strip().lower() or "auto"
    return "reference" if mode == "reference" else "sdpa"
