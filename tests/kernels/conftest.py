"""Fixtures of the kernel tests: the Triton CPU interpreter, scoped to one test, and poisoning.

Triton reads TRITON_INTERPRET when `@triton.jit` decorates a function: for our kernels when
the private `agentrt.kernels._*_triton` modules are imported, for triton's own jit helpers
(tl.max, tl.sum, tl.zeros, ...) when triton.language is imported. Our kernels call none of those
helpers (see the note in the kernel modules), so the `triton_interpret` fixture imports triton
first (compiled mode, as on a GPU box), then sets the variable with monkeypatch and executes
fresh copies of our kernel modules into sys.modules (the launchers look them up with importlib
at call time). Teardown restores the environment and the previous modules: nothing leaks to
other tests, and GPU tests in the same session still get compiled kernels.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator

import pytest
import torch

TRITON_MODULES = (
    "agentrt.kernels._paged_decode_triton",
    "agentrt.kernels._dms_prefill_triton",
    "agentrt.kernels._kv_slots_triton",
)


@pytest.fixture
def triton_interpret(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run the Triton kernels of this test in the CPU interpreter (AGENTRT_KERNELS=triton)."""
    pytest.importorskip("triton.language")  # imported before the env is set, see module doc
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("AGENTRT_KERNELS", "triton")
    for name in TRITON_MODULES:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.loader is not None, name
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, name, module)
        spec.loader.exec_module(module)
    yield


@pytest.fixture
def reference_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """Force the pure-torch reference for this test."""
    monkeypatch.setenv("AGENTRT_KERNELS", "reference")


@pytest.fixture
def poison_alloc(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make torch.empty/empty_like return NaN-filled floats (and -7 ints) during this test.

    Outputs and split-K workspaces are allocated with them, so any value a kernel forgets to
    write shows up as NaN in `assert_close`.
    """
    empty, empty_like = torch.empty, torch.empty_like

    def poison(t: torch.Tensor) -> torch.Tensor:
        if t.is_floating_point():
            return t.fill_(float("nan"))
        return t.fill_(-7) if t.dtype in (torch.int32, torch.int64) else t

    monkeypatch.setattr(torch, "empty", lambda *a, **kw: poison(empty(*a, **kw)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **kw: poison(empty_like(*a, **kw)))


@pytest.fixture
def cuda_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """GPU tests: default dispatch (CUDA -> Triton) whatever the caller's environment says."""
    monkeypatch.delenv("AGENTRT_KERNELS", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
