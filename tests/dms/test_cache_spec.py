"""CacheSpec byte math and validation, and byte-budget parsing (agentrt.dms.budget)."""

from __future__ import annotations

import json

import pytest
import torch

from agentrt.dms.budget import format_bytes, parse_bytes
from agentrt.dms.cache_spec import CacheSpec
from agentrt.errors import ConfigError


def llama8b(**overrides: object) -> CacheSpec:
    """Llama-3.1-8B-like cache: 32 layers, 8 KV heads, head_dim 128, bf16, block 256, w 512."""
    fields: dict[str, object] = dict(
        num_layers=32,
        num_kv_heads=8,
        head_dim=128,
        block_size=256,
        dtype=torch.bfloat16,
        window=512,
    )
    fields.update(overrides)
    return CacheSpec(**fields)  # type: ignore[arg-type]


# -- CacheSpec byte math (hand-computed) ---------------------------------------------------


def test_llama8b_bytes_per_block() -> None:
    spec = llama8b()
    # K+V: 2 * 256 slots * 128 dims * 2 bytes = 131072; metadata: 256 * (4 + 4) = 2048.
    assert spec.bytes_per_slot == 512 + 8
    assert spec.bytes_per_block == 131_072 + 2_048 == 133_120
    assert spec.ring_len == 513
    assert spec.itemsize == 2


def test_fp32_small_block_bytes() -> None:
    spec = llama8b(dtype=torch.float32, block_size=16, head_dim=64)
    # 2 * 16 * 64 * 4 = 8192 K/V bytes + 16 * 8 = 128 metadata bytes.
    assert spec.bytes_per_block == 8_320


@pytest.mark.parametrize(
    ("n", "blocks"), [(0, 0), (1, 1), (255, 1), (256, 1), (257, 2), (513, 3), (100_000, 391)]
)
def test_blocks_for_slots_is_ceil(n: int, blocks: int) -> None:
    assert llama8b().blocks_for_slots(n) == blocks


def test_bytes_for_sums_per_stream_blocks() -> None:
    spec = llama8b()
    # Streams of 513 (3 blocks), 256 (1), 0 (0), 1 (1) slots -> 5 blocks.
    assert spec.bytes_for([513, 256, 0, 1]) == 5 * 133_120 == 665_600
    assert spec.bytes_for([]) == 0


def test_whole_session_worst_case_bytes() -> None:
    spec = llama8b()
    # 32k tokens, nothing evicted: 32768 slots = 128 blocks per stream, 256 streams.
    slots = spec.max_stream_slots(32_768)
    assert slots == 32_768
    streams = [slots] * (spec.num_layers * spec.num_kv_heads)
    assert spec.bytes_for(streams) == 256 * 128 * 133_120 == 4_362_076_160
    # Dense bf16 KV alone would be 32768 * 32 * 8 * 128 * 2 * 2 = 4 GiB; metadata adds 1/64.
    assert spec.bytes_for(streams) == 4 * 2**30 + 4 * 2**30 // 64


def test_max_stream_slots_rejects_negative() -> None:
    with pytest.raises(ConfigError, match="tokens=-1"):
        llama8b().max_stream_slots(-1)


def test_describe_is_json_ready_and_consistent() -> None:
    d = llama8b().describe()
    assert json.loads(json.dumps(d)) == d
    assert d["dtype"] == "bfloat16"
    assert d["ring_len"] == 513
    assert d["bytes_per_block"] == 133_120
    assert d["streams_per_session"] == 256


def test_spec_is_frozen_and_hashable() -> None:
    spec = llama8b()
    with pytest.raises(AttributeError):
        spec.block_size = 16  # type: ignore[misc]
    assert hash(spec) == hash(llama8b())


def test_window_zero_is_allowed() -> None:
    assert llama8b(window=0).ring_len == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_layers", 0),
        ("num_kv_heads", -1),
        ("head_dim", 0),
        ("block_size", 0),
        ("window", -1),
        ("block_size", 16.0),
        ("head_dim", True),
        ("dtype", torch.int32),
        ("dtype", "bfloat16"),
    ],
)
def test_invalid_field_names_field_and_value(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        llama8b(**{field: value})
    assert f"{field}={value!r}" in str(info.value)


def test_validation_reports_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        llama8b(block_size=0, head_dim=0, window=-3)
    message = str(info.value)
    assert "block_size=0" in message and "head_dim=0" in message and "window=-3" in message


# -- budget parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (1024, 1024),
        ("1024", 1024),
        ("1024B", 1024),
        ("2GiB", 2 * 2**30),
        ("40G", 40 * 2**30),
        ("40g", 40 * 2**30),
        ("512 MiB", 512 * 2**20),
        ("512M", 512 * 2**20),
        ("1.5GB", 1_500_000_000),
        ("1.5GiB", 3 * 2**29),
        ("3 KB", 3_000),
        ("3KiB", 3_072),
        ("2TiB", 2 * 2**40),
        ("1TB", 10**12),
        ("  64 mb ", 64_000_000),
        (".5K", 512),
        ("0.1GiB", 107_374_182),  # floor of 0.1 * 2**30 = 107374182.4
    ],
)
def test_parse_bytes(value: str | int, expected: int) -> None:
    assert parse_bytes(value) == expected


@pytest.mark.parametrize(
    "value",
    ["", "GiB", "-1GiB", "2 GiBs", "1e9", "2 PB", "1,000", "2GiB extra", -5, 1.5, True, None],
)
def test_parse_bytes_rejects_bad_input(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        parse_bytes(value)  # type: ignore[arg-type]
    text = str(info.value)
    assert repr(value) in text
    assert "GiB" in text and "GB" in text  # the accepted forms are named


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (512, "512 B"),
        (1023, "1023 B"),
        (1024, "1.00 KiB"),
        (3 * 2**29, "1.50 GiB"),
        (512 * 2**20, "512.00 MiB"),
        (2 * 2**40, "2.00 TiB"),
        (-2048, "-2.00 KiB"),
    ],
)
def test_format_bytes(n: int, text: str) -> None:
    assert format_bytes(n) == text


def test_format_then_parse_roundtrips_whole_units() -> None:
    for n in (2**10, 7 * 2**20, 40 * 2**30):
        assert parse_bytes(format_bytes(n).replace(".00", "")) == n
