"""`python -m agentrt.bench.kv_dtype` on a tiny model: K/V bytes halve, the run is complete."""

from __future__ import annotations

from agentrt.bench.kv_dtype import main
from tests.dms.serving_helpers import tiny_model


def test_kv_dtype_bench_halves_kv_bytes(tmp_path, capsys):
    folder = tmp_path / "model"
    tiny_model(arch="llama", window=3, offset=5.0).save_pretrained(folder)
    result = main([str(folder), "40", "3", "1"])
    fp32, bf16 = result["float32"], result["bfloat16"]
    assert bf16["kv_tensor_bytes"] * 2 == fp32["kv_tensor_bytes"] > 0
    assert bf16["checkpoint_bytes"] < fp32["checkpoint_bytes"]
    assert len(fp32["prefill_s"]) == len(bf16["decode_s"]) == 1
    assert result["compute_dtype"] == "float32" and result["dms"]
    assert 0 < result["logits_max_abs_diff"] < 2**-8 * result["logits_max_abs"]
    assert "| bfloat16 |" in capsys.readouterr().out
