"""write_kv_slots / copy_kv_slots: reference, CPU torch path and Triton vs a per-row Python loop."""

from __future__ import annotations

import inspect

import pytest
import torch

from agentrt.kernels import copy_kv_slots, write_kv_slots
from agentrt.kernels.reference import copy_kv_slots as copy_reference
from agentrt.kernels.reference import write_kv_slots as write_reference
from tests.kernels._assert import assert_close

BACKENDS = [
    pytest.param("reference", id="reference"),
    pytest.param("torch", id="torch"),  # AGENTRT_KERNELS=auto on CPU tensors: the flat-view path
    pytest.param("triton", id="triton"),
]
DTYPES = [
    pytest.param(torch.float32, id="fp32"),
    pytest.param(torch.bfloat16, id="bf16"),
    pytest.param(torch.float16, id="fp16"),
]


@pytest.fixture
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "triton":
        request.getfixturevalue("triton_interpret")
    elif request.param == "torch":
        monkeypatch.setenv("AGENTRT_KERNELS", "auto")
    else:
        monkeypatch.setenv("AGENTRT_KERNELS", "reference")
    return request.param


def _pool(num_blocks: int, block_size: int, d: int, dtype: torch.dtype, gen: torch.Generator):
    kv_pool = torch.randn(num_blocks, 2, block_size, d, generator=gen).to(dtype)
    slot_expiry = torch.randint(0, 1000, (num_blocks, block_size), generator=gen, dtype=torch.int32)
    return kv_pool, slot_expiry


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("n", "d", "bs", "src_dtype", "skip"),
    [
        pytest.param(0, 64, 16, None, False, id="empty"),
        pytest.param(1, 128, 16, None, False, id="one-d128"),
        pytest.param(37, 80, 12, None, True, id="n37-d80-bs12-skips"),
        pytest.param(48, 64, 16, None, False, id="n48-all-written"),
        pytest.param(20, 64, 8, torch.float32, True, id="cast-from-fp32"),
    ],
)
def test_write_kv_slots(
    n: int,
    d: int,
    bs: int,
    src_dtype: torch.dtype | None,
    skip: bool,
    dtype: torch.dtype,
    backend: str,
) -> None:
    gen = torch.Generator().manual_seed(n)
    kv_pool, slot_expiry = _pool(9, bs, d, dtype, gen)
    slots = torch.randperm(9 * bs, generator=gen)[:n]
    if skip:
        slots[::4] = -1  # skipped rows
    k = torch.randn(n, d, generator=gen).to(src_dtype or dtype)
    v = torch.randn(n, d, generator=gen).to(src_dtype or dtype)
    expiry = torch.randint(0, 2**31 - 1, (n,), generator=gen, dtype=torch.int32)
    want_pool, want_expiry = kv_pool.clone(), slot_expiry.clone()
    for i, slot in enumerate(slots.tolist()):
        if slot >= 0:
            want_pool[slot // bs, 0, slot % bs] = k[i].to(dtype)
            want_pool[slot // bs, 1, slot % bs] = v[i].to(dtype)
            want_expiry[slot // bs, slot % bs] = expiry[i]
    write_kv_slots(kv_pool, slot_expiry, slots, k, v, expiry)
    assert_close("kv_pool", want_pool, kv_pool, 0.0, 0.0)
    assert torch.equal(want_expiry, slot_expiry)


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("n", "d", "bs", "overlap"),
    [
        pytest.param(0, 64, 16, False, id="empty"),
        pytest.param(1, 64, 16, False, id="one"),
        pytest.param(30, 96, 12, False, id="n30-d96-bs12"),
        pytest.param(9, 64, 8, True, id="cycle-src-is-dst"),
    ],
)
def test_copy_kv_slots(
    n: int, d: int, bs: int, overlap: bool, dtype: torch.dtype, backend: str
) -> None:
    gen = torch.Generator().manual_seed(n + 1)
    kv_pool, slot_expiry = _pool(8, bs, d, dtype, gen)
    kv_pool[0, :, 0] = float("nan")  # NaN is copied bit-exactly, never read as a number
    perm = torch.randperm(8 * bs, generator=gen)
    src, dst = perm[:n], perm[n : 2 * n]
    if overlap:  # a -> b, b -> c, ...: every source is read before it is overwritten
        dst = src.roll(1)
    if n:
        src[0] = 0
    want_pool, want_expiry = kv_pool.clone(), slot_expiry.clone()
    for s, t in zip(src.tolist(), dst.tolist(), strict=True):
        want_pool[t // bs, :, t % bs] = kv_pool[s // bs, :, s % bs]
        want_expiry[t // bs, t % bs] = slot_expiry[s // bs, s % bs]
    copy_kv_slots(kv_pool, slot_expiry, src, dst)
    assert torch.equal(want_pool.view(torch.uint8), kv_pool.view(torch.uint8))
    assert torch.equal(want_expiry, slot_expiry)


def test_references_are_the_public_signatures() -> None:
    for public, ref in ((write_kv_slots, write_reference), (copy_kv_slots, copy_reference)):
        assert inspect.signature(public) == inspect.signature(ref)


def test_rejects_bad_inputs() -> None:
    kv_pool, slot_expiry = _pool(2, 4, 16, torch.float32, torch.Generator().manual_seed(0))
    k = torch.zeros(3, 16)
    with pytest.raises(TypeError, match="slot_mapping must have dtype"):
        write_kv_slots(kv_pool, slot_expiry, torch.zeros(3, dtype=torch.int32), k, k, k[:, 0].int())
    with pytest.raises(ValueError, match=r"k and v must be \[N=2, D=16\]"):
        write_kv_slots(kv_pool, slot_expiry, torch.zeros(2, dtype=torch.long), k, k, k[:2, 0].int())
    with pytest.raises(ValueError, match=r"slot_expiry must be \[num_blocks, block_size\]"):
        copy_kv_slots(kv_pool, slot_expiry[:1], torch.zeros(1, dtype=torch.long), torch.zeros(1))
    with pytest.raises(ValueError, match="one length, got 1 and 2"):
        src, dst = torch.zeros(1, dtype=torch.long), torch.zeros(2, dtype=torch.long)
        copy_kv_slots(kv_pool, slot_expiry, src, dst)
