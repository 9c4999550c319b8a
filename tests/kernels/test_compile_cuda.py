"""The Triton kernels compile for Hopper/Ampere (to TTGIR) on a machine without a GPU.

The interpreter accepts code the GPU compiler rejects (non-constexpr globals, bad dot shapes,
type mismatches across `if` branches), so this lowers every kernel configuration the launchers
use with triton's CUDA backend: front end -> TTIR -> TTGIR (layouts, MMA selection).
"""

from __future__ import annotations

import inspect

import pytest
import torch

triton = pytest.importorskip("triton")
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from agentrt.kernels import _dms_prefill_triton as prefill  # noqa: E402
from agentrt.kernels import _kv_slots_triton as slots  # noqa: E402
from agentrt.kernels import _paged_decode_triton as decode  # noqa: E402

INT32_POINTERS = {
    "bt_ptr", "lens_ptr", "kexp_ptr", "pos_ptr", "cu_ptr", "sexp_ptr",
    "tile_seq_ptr", "tile_start_ptr", "exp_ptr", "exp_out_ptr",
}  # fmt: skip
INT64_POINTERS = {"slot_ptr", "src_ptr", "dst_ptr"}
FP32_POINTERS = {"part_out_ptr", "part_lse_ptr"}
TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _signature(kernel, dtype: str, constexprs: dict) -> dict[str, str]:
    """Triton signature from the parameter names: *_ptr are pointers, scale_log2 fp32, else i32."""
    sig = {}
    for name in inspect.signature(kernel.fn).parameters:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in INT32_POINTERS:
            sig[name] = "*i32"
        elif name in INT64_POINTERS:
            sig[name] = "*i64"
        elif name in FP32_POINTERS:
            sig[name] = "*fp32"
        elif name.endswith("_ptr"):
            sig[name] = f"*{dtype}"
        else:
            sig[name] = "fp32" if name == "scale_log2" else "i32"
    return sig


def _lower_to_ttgir(kernel, dtype: str, constexprs: dict, arch: int, num_warps: int) -> str:
    from triton._C.libtriton import ir
    from triton.compiler.compiler import make_backend

    sig = _signature(kernel, dtype, constexprs)
    # what the launcher's specialisation sees on a GPU: 16-byte aligned pointers and strides
    # that are multiples of 16 (head_dim is), so loads vectorise as they will at run time
    aligned = {
        (i,): [["tt.divisibility", 16]]
        for i, (name, kind) in enumerate(sig.items())
        if kind.startswith("*") or name.startswith("stride_")
    }
    src = ASTSource(kernel, sig, constexprs, aligned)
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    options = backend.parse_options(
        {"num_warps": num_warps, "num_stages": 2, "enable_fp_fusion": True}
    )
    context = ir.context()
    ir.load_dialects(context)
    backend.load_dialects(context)
    codegen = backend.get_codegen_implementation(options)
    module = src.make_ir(target, options, codegen, backend.get_module_map(), context)
    stages: dict = {}
    backend.add_stages(stages, options, src.language)
    metadata: dict = {}
    for ext in ("ttir", "ttgir"):
        module = stages[ext](module, metadata)
    return str(module)


def _decode_consts(head_dim: int, group: int, splits: int, dtype: str) -> dict:
    block_m, block_n, block_d = decode.tile_config(head_dim, group, TORCH_DTYPES[dtype])
    return dict(
        G=group, BLOCK_SIZE=64, HEAD_DIM=head_dim, SPLIT=splits > 1, BLOCK_M=block_m,
        BLOCK_N=block_n, BLOCK_D=block_d, PRECISION="ieee" if dtype == "fp32" else "tf32",
        DOT_F32=False,
    )  # fmt: skip


def _prefill_consts(head_dim: int, group: int, dtype: str) -> dict:
    g_pad, block_q, block_n, block_d = prefill.tile_config(head_dim, group, TORCH_DTYPES[dtype])
    return dict(
        G=group, BLOCK_SIZE=16, G_PAD=g_pad, HEAD_DIM=head_dim, BLOCK_Q=block_q,
        BLOCK_M=block_q * g_pad, BLOCK_N=block_n, BLOCK_D=block_d,
        PRECISION="ieee" if dtype == "fp32" else "tf32", DOT_F32=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("head_dim", "group", "splits", "dtype", "arch"),
    [
        pytest.param(128, 4, 1, "bf16", 90, id="d128-g4-nosplit-bf16-sm90"),
        pytest.param(128, 4, 8, "bf16", 90, id="d128-g4-split8-bf16-sm90"),
        pytest.param(256, 8, 2, "fp16", 90, id="d256-g8-split2-fp16-sm90"),
        pytest.param(64, 1, 4, "fp32", 80, id="d64-g1-split4-fp32-sm80"),
    ],
)
def test_decode_lowers(head_dim: int, group: int, splits: int, dtype: str, arch: int) -> None:
    consts = _decode_consts(head_dim, group, splits, dtype)
    assert "tt.func" in _lower_to_ttgir(decode._paged_decode_kernel, dtype, consts, arch, 4)


def test_split_reduce_lowers() -> None:
    consts = dict(HEAD_DIM=80, BLOCK_S=8, BLOCK_D=128)
    assert "tt.func" in _lower_to_ttgir(decode._split_reduce_kernel, "bf16", consts, 90, 4)


@pytest.mark.parametrize(
    ("head_dim", "group", "dtype", "arch"),
    [
        pytest.param(128, 4, "bf16", 90, id="d128-g4-bf16-sm90"),
        pytest.param(80, 3, "fp16", 90, id="d80-g3-fp16-sm90"),
        pytest.param(256, 8, "fp32", 80, id="d256-g8-fp32-sm80"),
    ],
)
def test_prefill_lowers(head_dim: int, group: int, dtype: str, arch: int) -> None:
    consts = _prefill_consts(head_dim, group, dtype)
    assert "tt.func" in _lower_to_ttgir(prefill._dms_prefill_kernel, dtype, consts, arch, 4)


@pytest.mark.parametrize("kernel", ["_write_kv_slots_kernel", "_gather_kv_slots_kernel"])
def test_slot_kernels_lower(kernel: str) -> None:
    consts = dict(HEAD_DIM=128, ROWS=slots.ROWS, BLOCK_D=128)
    assert "tt.func" in _lower_to_ttgir(getattr(slots, kernel), "bf16", consts, 90, 4)
