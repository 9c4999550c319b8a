"""backend_for: the AGENTRT_KERNELS switch, and the CPU path never importing triton."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys

import pytest
import torch

import agentrt.kernels as K
import agentrt.kernels.reference as R


@pytest.mark.parametrize(
    ("mode", "interpret", "expected"),
    [
        pytest.param(None, None, "reference", id="default-auto"),
        pytest.param("auto", "1", "reference", id="auto-ignores-interpreter"),
        pytest.param(" Reference ", None, "reference", id="reference-normalised"),
        pytest.param("triton", "1", "triton", id="triton-interpreter"),
    ],
)
def test_backend_for_cpu(
    mode: str | None, interpret: str | None, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in (("AGENTRT_KERNELS", mode), ("TRITON_INTERPRET", interpret)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert K.backend_for(torch.zeros(1)) == expected


def test_triton_on_cpu_without_interpreter_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTRT_KERNELS", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="tensor is on cpu.*TRITON_INTERPRET=1"):
        K.backend_for(torch.zeros(1))


def test_unknown_mode_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTRT_KERNELS", "cuda")
    with pytest.raises(ValueError, match=r"auto\|triton\|reference, got 'cuda'"):
        K.backend_for(torch.zeros(1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_backend_for_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENTRT_KERNELS", raising=False)
    assert K.backend_for(torch.zeros(1, device="cuda")) == "triton"
    monkeypatch.setenv("AGENTRT_KERNELS", "reference")
    assert K.backend_for(torch.zeros(1, device="cuda")) == "reference"


@pytest.mark.parametrize(
    "name", ["paged_decode_attention", "dms_prefill_attention", "write_kv_slots", "copy_kv_slots"]
)
def test_reference_has_the_public_signature(name: str) -> None:
    public, ref = getattr(K, name), getattr(R, name)
    assert list(inspect.signature(public).parameters) == list(inspect.signature(ref).parameters)
    assert inspect.signature(public) == inspect.signature(ref)


def test_cpu_calls_never_import_triton() -> None:
    code = """
import sys, torch
import agentrt.kernels as K
pool = torch.randn(4, 2, 8, 16)
bt = torch.arange(4, dtype=torch.int32).view(1, 2, 2)
lens = torch.tensor([[9, 3]], dtype=torch.int32)
out = K.paged_decode_attention(torch.randn(1, 4, 16), pool, bt, lens, 0.25)
assert out.shape == (1, 4, 16) and bool(torch.isfinite(out).all())
K.write_kv_slots(pool, torch.zeros(4, 8, dtype=torch.int32), torch.tensor([5]),
                 torch.ones(1, 16), torch.ones(1, 16), torch.tensor([7], dtype=torch.int32))
print("triton" in sys.modules)
"""
    env = {k: v for k, v in os.environ.items() if k != "AGENTRT_KERNELS"}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


@pytest.mark.parametrize("head_dim", [8, 512])
def test_head_dims_outside_the_triton_tiles_go_to_the_reference(
    head_dim: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AGENTRT_KERNELS", raising=False)
    assert K.backend_for(torch.zeros(1), head_dim=head_dim) == "reference"
    monkeypatch.setenv("AGENTRT_KERNELS", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert K.backend_for(torch.zeros(1), head_dim=64) == "triton"
    with pytest.raises(ValueError, match=f"head_dim {head_dim} is outside.*AGENTRT_KERNELS=auto"):
        K.backend_for(torch.zeros(1), head_dim=head_dim)
