"""The one-pass checkpoint reader: tensors equal to what was written, the content digest
equal to `tensors_sha256`, malformed bytes refused with a reason."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save

from agentrt.sessions.atomic import safetensors_bytes
from agentrt.sessions.fingerprint import tensors_sha256
from agentrt.sessions.tensor_file import parse_safetensors, parse_with_digest, sha256_started


def sample() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "k": torch.randn(7, 4, generator=g),
        "half": torch.randn(3, 5, generator=g).to(torch.bfloat16),
        "pos": torch.arange(9, dtype=torch.int32),
        "flag": torch.rand(2, 3, generator=g) < 0.5,
        "ids": torch.arange(4, dtype=torch.int64),
        "none": torch.zeros(0, 4),
        "none_int": torch.zeros(0, dtype=torch.int64),
    }


@pytest.mark.parametrize("writer", ["ours", "safetensors"])
def test_tensors_and_digest_match_what_was_written(writer: str) -> None:
    tensors = sample()
    raw = safetensors_bytes(tensors, {"a": "b"}) if writer == "ours" else save(tensors, {"a": "b"})
    meta, got, digest = parse_with_digest(bytearray(raw))
    assert meta == {"a": "b"} and got.keys() == tensors.keys()
    for name, t in tensors.items():
        assert got[name].dtype == t.dtype and got[name].shape == t.shape
        assert torch.equal(got[name], t), name
    assert digest == tensors_sha256(tensors)


def test_malformed_bytes_are_refused_with_a_reason() -> None:
    raw = bytearray(safetensors_bytes(sample(), {}))
    with pytest.raises(ValueError, match="too short"):
        parse_safetensors(bytearray(b"\x01\x02"))
    with pytest.raises(ValueError, match="offsets .* do not fit"):
        parse_safetensors(raw[:-8])  # the last tensor's bytes are cut off
    bad = bytearray(raw)
    bad[0:8] = (10**9).to_bytes(8, "little")
    with pytest.raises(ValueError, match="header length"):
        parse_safetensors(bad)
    bad = bytearray(raw)
    bad[8] = ord("[")
    with pytest.raises(ValueError, match="JSON"):
        parse_safetensors(bad)


@pytest.mark.parametrize("size", [100, 5 << 20])  # hashed inline, and on a thread
def test_sha256_started_equals_hashlib(size: int) -> None:
    import hashlib

    buf = bytearray(torch.randint(0, 256, (size,), dtype=torch.uint8).numpy().tobytes())
    result = sha256_started(buf)
    assert result() == hashlib.sha256(buf).hexdigest()
    assert result() == hashlib.sha256(buf).hexdigest()  # asking twice is fine
