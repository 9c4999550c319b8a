"""CPU-side parts of agentrt.bench.kernel_bench and agentrt.bench.gpu_check (no GPU needed)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from agentrt.bench import gpu_check
from agentrt.bench.kernel_bench import (
    LLAMA_3_1_8B,
    AttentionShape,
    decode_bytes,
    format_table,
    held_lengths,
    random_paged_cache,
)


def test_held_lengths_dense_and_compressed() -> None:
    assert held_lengths(2, 4096, 1, 8) == [[4096] * 8] * 2
    lens = held_lengths(4, 32768, 8, 8, seed=1)
    flat = [n for row in lens for n in row]
    assert len(lens) == 4 and all(len(row) == 8 for row in lens)
    assert all(0.75 * 4096 - 1 <= n <= 1.25 * 4096 + 1 for n in flat)
    assert len(set(flat)) > 1, "DMS heads must get different lengths"
    assert held_lengths(4, 32768, 8, 8, seed=1) == lens
    assert held_lengths(1, 3, 8, 2) == [[1, 1]]  # never below one slot


def test_decode_bytes_counts_kv_of_held_slots_plus_q_and_out() -> None:
    shape = AttentionShape(num_q_heads=32, num_kv_heads=8, head_dim=128)
    assert decode_bytes(1000, 2, shape, 2) == 1000 * 2 * 128 * 2 + 2 * 2 * 32 * 128 * 2
    assert decode_bytes(0, 1, LLAMA_3_1_8B, 4) == 2 * 32 * 128 * 4


def test_random_paged_cache_gives_every_stream_its_own_blocks() -> None:
    lens = torch.tensor([[0, 5, 64], [65, 1, 130]], dtype=torch.int32)
    pool, expiry, tables = random_paged_cache(lens, 64, 16, torch.float16, seed=2)
    need = (lens + 63) // 64
    assert pool.shape == (int(need.sum()), 2, 64, 16) and pool.dtype == torch.float16
    assert tables.shape == (2, 3, int(need.max())) and tables.dtype == torch.int32
    owned = [int(b) for s in range(2) for h in range(3) for b in tables[s, h, : need[s, h]]]
    assert sorted(owned) == list(range(int(need.sum())))
    assert bool((expiry == 2**31 - 1).all())


def _fake_result() -> dict:
    decode = {
        "batch": 8, "context": 32768, "cr": 8, "slots_held": 262144, "num_splits": 4,
        "kernel_ms": 0.1, "bytes": 134217728, "achieved_gbps": 1342.2, "bandwidth_fraction": 0.45,
        "sdpa_ms": 0.9, "speedup_vs_sdpa": 9.0, "flash_ms": None, "speedup_vs_flash": None,
    }  # fmt: skip
    prefill = {
        "tokens": 8192, "cached_context": 0, "cr": 4, "slots_held": 0, "kernel_ms": 2.0,
        "sdpa_ms": 3.0, "speedup_vs_sdpa": 1.5, "flash_ms": None, "speedup_vs_flash": None,
    }  # fmt: skip
    return {
        "device": "NVIDIA H100 80GB HBM3", "dtype": "bfloat16", "shape": {}, "block_size": 64,
        "copy_bandwidth_gbps": 2980.0, "matmul_tflops": 650.0, "flash_attn": False,
        "decode": [decode], "prefill": [prefill],
    }  # fmt: skip


def test_format_table_renders_rows_and_missing_baselines() -> None:
    result = _fake_result()
    json.dumps(result)  # the result must stay JSON-able
    text = format_table(result)
    lines = text.splitlines()
    assert "H100" in lines[0] and "2980 GB/s" in lines[0] and "650 TFLOP/s" in lines[0]
    decode_row = next(line for line in lines if "262144" in line)
    assert "45.0" in decode_row and "9.00" in decode_row and decode_row.rstrip().endswith("-")
    assert any("8192" in line and "1.50" in line for line in lines)


def test_compare_flags_errors_and_nan() -> None:
    want = torch.tensor([1.0, 2.0, 4.0])
    ok = gpu_check.compare("ok", want, want + 1e-3, 1e-2, 1e-2)
    assert ok["passed"] and ok["max_abs"] == pytest.approx(1e-3, rel=1e-3)
    bad = gpu_check.compare("bad", want, want * 1.1, 1e-2, 1e-2)
    assert not bad["passed"] and bad["max_rel"] == pytest.approx(0.1, rel=1e-3)
    nan = gpu_check.compare("nan", want, torch.tensor([1.0, float("nan"), 4.0]), 1.0, 1.0)
    assert not nan["passed"] and nan["nonfinite"] == 1
    table = gpu_check.format_checks([ok, bad])
    assert "ok" in table.splitlines()[1] and "FAIL" in table.splitlines()[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU exit path")
def test_gpu_check_without_cuda_exits_2(tmp_path, capsys) -> None:
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "gpu_check.json").exists()
    assert len(gpu_check.CHECKS) >= 8


def test_bench_modules_import_light() -> None:
    code = (
        "import json, sys; import agentrt.bench.gpu_check, agentrt.bench.kernel_bench; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    loaded = set(json.loads(proc.stdout.splitlines()[-1]))
    assert not loaded & {"sqlalchemy", "textual", "triton"}, sorted(loaded)
