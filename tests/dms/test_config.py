"""DMSConfig: NVIDIA's key names and defaults, config.json round trips, validation."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import Qwen3Config

from agentrt.dms import DMSConfig
from agentrt.errors import ConfigError

# dms-reference.md §1.6 / §10.A: NVIDIA's defaults for the keys that change behaviour.
NVIDIA_DEFAULTS = {
    "dms_alpha_scale": 100.0,
    "dms_initial_alpha_offset": 5.0,
    "dms_window_size": 512,
    "dms_separate_alpha": False,
    "dms_alpha_per": "head",
    "dms_tau": 0.1,
    "dms_disable_eviction": False,
    "dms_chunked_prefill": None,
}

# The [HF] config of nvidia/Qwen3-8B-DMS-8x carries only these DMS keys plus auto_map.
NVIDIA_HF_KEYS = {
    "dms_alpha_scale": 100.0,
    "dms_initial_alpha_offset": 5.0,
    "dms_window_size": 512,
    "dms_cr": 8,
}
AUTO_MAP = {
    "AutoConfig": "configuration_qwen3_dms.Qwen3Config",
    "AutoModelForCausalLM": "modeling_qwen3_dms.Qwen3ForCausalLM",
}


def test_defaults_equal_nvidia() -> None:
    assert DMSConfig().to_hf_dict() == NVIDIA_DEFAULTS
    cfg = DMSConfig()
    assert cfg.flavour == "qneuron"
    assert cfg.ring_len == 513  # W = w + 1 always-attended tokens


def test_hf_dict_uses_nvidia_names_and_round_trips() -> None:
    cfg = DMSConfig(
        alpha_scale=50.0,
        initial_alpha_offset=2.5,
        window_size=7,
        separate_alpha=True,
        alpha_per="layer",
        tau=0.3,
        disable_eviction=True,
        chunked_prefill=64,
    )
    out = cfg.to_hf_dict()
    assert set(out) == set(NVIDIA_DEFAULTS)
    assert out["dms_window_size"] == 7 and out["dms_separate_alpha"] is True
    assert json.loads(json.dumps(out)) == out  # JSON-serialisable for config.json
    assert DMSConfig.from_dict(out) == cfg
    assert cfg.flavour == "adapter"


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"dms_cr": 8}, id="dms_cr"),
        pytest.param({"auto_map": AUTO_MAP}, id="auto_map"),
        pytest.param({"dms_paged_attention_block_size": 256}, id="block_size"),
        pytest.param(
            {
                "dms_manual_inference_mode": False,
                "dms_preallocate_for_tokens": 4096,
                "dms_compile_limit": 72,
            },
            id="mo-runtime-keys",
        ),
    ],
)
def test_from_dict_ignores_decorative_keys(extra: dict) -> None:
    cfg = DMSConfig.from_dict({"dms_window_size": 9, **extra}, strict=True)
    assert cfg == DMSConfig(window_size=9)


def test_from_dict_nvidia_hf_config() -> None:
    """The [HF] checkpoint's keys: no dms_separate_alpha → q-neuron flavour, NVIDIA defaults."""
    cfg = DMSConfig.from_dict({**NVIDIA_HF_KEYS, "auto_map": AUTO_MAP})
    assert cfg == DMSConfig()
    assert cfg.flavour == "qneuron"


def test_from_dict_accepts_bare_field_names() -> None:
    assert DMSConfig.from_dict({"window_size": 3, "tau": 0.5}) == DMSConfig(window_size=3, tau=0.5)


def test_unknown_dms_keys_strict_raise_naming_them() -> None:
    with pytest.raises(ConfigError) as info:
        DMSConfig.from_dict({"dms_window_size": 4, "dms_windw": 3, "dms_foo": 1}, strict=True)
    message = str(info.value)
    assert "dms_windw" in message and "dms_foo" in message
    assert "dms_window_size" not in message.split("hint")[0]  # the valid key is not blamed


def test_unknown_dms_keys_not_strict_are_dropped() -> None:
    cfg = DMSConfig.from_dict({"dms_window_size": 4, "dms_future_knob": 1}, strict=False)
    assert cfg == DMSConfig(window_size=4)


def test_invalid_values_list_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        DMSConfig(alpha_per="token", window_size=-1, tau=0.0)
    message = str(info.value)
    for key, value in (("dms_alpha_per", "token"), ("dms_window_size", "-1"), ("dms_tau", "0")):
        assert key in message and value in message, (key, message)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        pytest.param({"alpha_per": "token"}, "dms_alpha_per", id="alpha_per"),
        pytest.param({"window_size": -1}, "dms_window_size", id="window-negative"),
        pytest.param({"window_size": 2.5}, "dms_window_size", id="window-float"),
        pytest.param({"tau": 0.0}, "dms_tau", id="tau-zero"),
        pytest.param({"tau": -0.1}, "dms_tau", id="tau-negative"),
        pytest.param({"alpha_scale": 0.0}, "dms_alpha_scale", id="scale-zero"),
        pytest.param({"chunked_prefill": 0}, "dms_chunked_prefill", id="chunk-zero"),
    ],
)
def test_each_invalid_value_is_named(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        DMSConfig(**kwargs)


def test_from_dict_and_replace_validate() -> None:
    with pytest.raises(ConfigError, match="dms_tau"):
        DMSConfig.from_dict({"dms_tau": 0})
    with pytest.raises(ConfigError, match="dms_window_size"):
        DMSConfig().replace(window_size=-3)
    assert DMSConfig().replace(window_size=0).window_size == 0  # w = 0 is valid


def test_hf_config_round_trip() -> None:
    hf = Qwen3Config(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    assert DMSConfig.from_hf_config(hf) is None  # no dms_* keys: a plain model
    cfg = DMSConfig(window_size=5, separate_alpha=True, alpha_per="layer")
    cfg.write_to_hf_config(hf)
    assert hf.to_dict()["dms_window_size"] == 5
    assert DMSConfig.from_hf_config(hf) == cfg
    # NVIDIA's decorative keys on a real HF config are tolerated.
    hf.dms_cr = 8
    hf.dms_paged_attention_block_size = 256
    assert DMSConfig.from_hf_config(hf) == cfg


@settings(max_examples=50, deadline=None)
@given(
    alpha_scale=st.floats(0.01, 1e4, allow_nan=False),
    offset=st.floats(-100, 100, allow_nan=False),
    window=st.integers(0, 1 << 20),
    separate=st.booleans(),
    per=st.sampled_from(["head", "layer"]),
    tau=st.floats(1e-6, 10, allow_nan=False),
    disable=st.booleans(),
    chunk=st.one_of(st.none(), st.integers(1, 1 << 16)),
)
def test_valid_configs_round_trip_through_json(
    alpha_scale, offset, window, separate, per, tau, disable, chunk
) -> None:
    cfg = DMSConfig(alpha_scale, offset, window, separate, per, tau, disable, chunk)
    raw = json.loads(json.dumps(cfg.to_hf_dict()))
    assert DMSConfig.from_dict(raw) == cfg
