"""KV storage dtype: bf16 storage for an fp32 model, next to fp32 storage, on tiny random Llamas.

Tolerance for bf16 storage (measured, tiny Llama below): logits differ from fp32 storage by
at most ~6.6e-4 for logits of max magnitude ~0.71, i.e. ~2^-10 of the largest logit. bf16
keeps 8 significant bits (relative rounding <= 2^-9 per element), and attention averages
the rounding of many keys and values, so the bound used is 2^-8 of the largest logit: 4x
the measured error, still far below what a wrong read (a raw bf16 bit pattern, a missing
upcast, a stale slot) produces.
"""

from __future__ import annotations

import pytest
import torch

from agentrt import Engine
from agentrt.dms.cache_state import pack_state, unpack_state
from agentrt.dms.kv_dtype import KV_DTYPE_CHOICES, resolve_kv_dtype
from agentrt.dms.serving import StepItem
from agentrt.errors import CheckpointError, ConfigError
from agentrt.settings import ENV_KV_DTYPE, KV_DTYPES, kv_dtype_setting
from tests.dms.serving_helpers import run_chunks, tiny_model

BF16_REL = 2.0**-8  # max |logit diff| / max |logit| allowed for bf16 storage (see module doc)


@pytest.fixture(scope="module")
def model():
    """A 2-layer Llama (GQA, head_dim 16) with little eviction, fp32 weights."""
    return tiny_model(arch="llama", window=3, offset=5.0)


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 97, (64,), generator=torch.Generator().manual_seed(0))


def _logits(model, ids, kv_dtype, sizes):
    pool = model.make_pool(num_blocks=400, block_size=4, kv_dtype=kv_dtype)
    cache = model.new_cache(pool)
    return run_chunks(model, cache, ids, sizes), cache


def _engine(model, tmp_path, kv_dtype, **kw):
    home = tmp_path / "home"
    return Engine(
        model,
        kv_dtype=kv_dtype,
        num_blocks=600,
        block_size=4,
        home=home,
        db=f"sqlite:///{home / 'agentrt.db'}",
        **kw,
    )


# -- resolution ------------------------------------------------------------------------------


def test_auto_resolves_to_bf16_on_cpu_for_fp32_and_bf16_models():
    assert resolve_kv_dtype("auto", torch.float32, "cpu") == torch.bfloat16
    assert resolve_kv_dtype("auto", torch.bfloat16, "cpu") == torch.bfloat16
    assert resolve_kv_dtype("auto", torch.float16, "cpu") == torch.float16  # no bf16 for fp16
    assert resolve_kv_dtype("auto", torch.float64, "cpu") == torch.float64


def test_auto_keeps_the_model_dtype_where_cuda_lacks_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_kv_dtype("auto", torch.float32, "cuda") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_kv_dtype("auto", torch.float32, "cuda") == torch.bfloat16


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ("model", torch.float32),
        (None, torch.float32),
        ("bfloat16", torch.bfloat16),
        ("Float16", torch.float16),
        ("float32", torch.float32),
        (torch.bfloat16, torch.bfloat16),
    ],
)
def test_named_and_torch_dtypes(value, want):
    assert resolve_kv_dtype(value, torch.float32, "cpu") == want


@pytest.mark.parametrize("value", ["int8", "fp8", "", torch.int32])
def test_bad_kv_dtype_is_a_config_error(value):
    with pytest.raises(ConfigError, match="kv_dtype"):
        resolve_kv_dtype(value, torch.float32, "cpu")


def test_env_setting_is_validated_and_names_the_variable(monkeypatch):
    assert KV_DTYPES == KV_DTYPE_CHOICES  # the CLI's torch-free copy of the names
    monkeypatch.delenv(ENV_KV_DTYPE)
    assert kv_dtype_setting() == "auto"
    monkeypatch.setenv(ENV_KV_DTYPE, "BFloat16")
    assert kv_dtype_setting() == "bfloat16"
    monkeypatch.setenv(ENV_KV_DTYPE, "fp4")
    with pytest.raises(ConfigError, match=ENV_KV_DTYPE):
        kv_dtype_setting()


def test_engine_default_is_auto_and_env_and_argument_override(model, tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_KV_DTYPE)  # the product default (tests set "model" suite-wide)
    assert _engine(model, tmp_path / "a", None).kv_dtype == torch.bfloat16
    monkeypatch.setenv(ENV_KV_DTYPE, "float32")
    assert _engine(model, tmp_path / "b", None).kv_dtype == torch.float32
    eng = _engine(model, tmp_path / "c", "bfloat16")
    assert eng.kv_dtype == eng.pool.kv.dtype == torch.bfloat16
    assert eng.pool.stats()["dtype"] == "bfloat16"


# -- numerics --------------------------------------------------------------------------------


def test_bf16_storage_logits_close_to_fp32_storage(model, ids):
    fp32, c32 = _logits(model, ids, "float32", [40] + [1] * 24)
    bf16, c16 = _logits(model, ids, "bfloat16", [40] + [1] * 24)
    assert c32.pool.kv.dtype == torch.float32 and c16.pool.kv.dtype == torch.bfloat16
    assert bf16.dtype == torch.float32  # compute stays fp32
    diff = (bf16 - fp32).abs().max().item()
    bound = BF16_REL * fp32.abs().max().item()
    assert 0 < diff <= bound, f"max |bf16 - fp32| = {diff:.3e}, bound {bound:.3e}"
    dense = model.forward_reference(ids[None]).logits[0]  # fp32 storage stays the exact path
    torch.testing.assert_close(fp32, dense, atol=1e-5, rtol=1e-5)


def test_bf16_storage_greedy_tokens_agree_where_the_margin_allows(model, ids):
    """Teacher-forced decode: where fp32's top-1 leads top-2 by more than twice the bf16
    bound, bf16 storage picks the same token; elsewhere its pick is within the bound."""
    fp32, _ = _logits(model, ids, "float32", [8] + [1] * 56)
    bf16, _ = _logits(model, ids, "bfloat16", [8] + [1] * 56)
    bound = BF16_REL * fp32.abs().max().item()
    top2 = fp32.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * bound
    assert clear.sum() >= 48, f"only {int(clear.sum())} of 64 positions have a clear margin"
    assert torch.equal(fp32.argmax(-1)[clear], bf16.argmax(-1)[clear])
    picked = fp32.gather(1, bf16.argmax(-1, keepdim=True))[:, 0]
    assert ((top2[:, 0] - picked) <= 2 * bound).all()


def test_bf16_storage_whole_chunked_and_token_by_token_prefill_agree(model, ids):
    """A chunk's own keys are seen as stored, so chunking does not change bf16 results."""
    whole, _ = _logits(model, ids, "bfloat16", [64])
    chunked, _ = _logits(model, ids, "bfloat16", [13, 7, 20, 24])
    stepwise, _ = _logits(model, ids, "bfloat16", [1] * 64)
    torch.testing.assert_close(chunked, whole, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(stepwise, whole, atol=2e-6, rtol=1e-5)


# -- checkpoints and swap --------------------------------------------------------------------


def test_packed_kv_is_exactly_half_and_restores_bitwise(model, ids):
    _, c32 = _logits(model, ids, "float32", [64])
    _, c16 = _logits(model, ids, "bfloat16", [64])
    s32, s16 = pack_state(c32), pack_state(c16)
    kv = [k for k in s32 if k.endswith((".k", ".v"))]
    assert len(kv) == 2 * model.arch.num_layers
    for name in kv:
        assert s16[name].dtype == torch.bfloat16
        assert s16[name].shape == s32[name].shape
        assert s16[name].nbytes * 2 == s32[name].nbytes
    again = unpack_state(s16, c16.pool, window=c16.window)
    for name, tensor in pack_state(again).items():
        assert torch.equal(tensor, s16[name]), name
        assert tensor.dtype == s16[name].dtype


def test_unpack_refuses_a_pool_of_another_storage_dtype(model, ids):
    _, c16 = _logits(model, ids[:20], "bfloat16", [20])
    pool32 = model.make_pool(num_blocks=400, block_size=4, kv_dtype="float32")
    free = pool32.num_free
    with pytest.raises(CheckpointError, match="dtype: checkpoint bfloat16, pool float32") as err:
        unpack_state(pack_state(c16), pool32, window=c16.window)
    assert "kv_dtype='bfloat16'" in err.value.hint and "AGENTRT_KV_DTYPE" in err.value.hint
    assert pool32.num_free == free  # nothing was allocated


def test_checkpoint_file_halves_and_resume_is_exact_under_bf16(model, ids, tmp_path):
    sizes = {}
    for kv_dtype in ("float32", "bfloat16"):
        eng = _engine(model, tmp_path / kv_dtype, kv_dtype)
        s = eng.new_session(name="a")
        s.prefill(ids[:48])
        sizes[kv_dtype] = _kv_bytes(eng, s)
        eng.close()
    assert sizes["bfloat16"] * 2 == sizes["float32"] > 0

    eng = _engine(model, tmp_path / "bfloat16", "bfloat16")
    s = eng.open_session("a")
    state = pack_state(s.cache)
    assert state["layer.0.k"].dtype == torch.bfloat16
    cont = s.prefill(ids[48:56])
    eng.close()
    # never stopped, same chunks; the engine's prefill asks for the last token's logits only
    # (the LM head over one row), so the reference does too
    _, cache = _logits(model, ids[:48], "bfloat16", [48])
    (never_stopped,) = model.step([StepItem(cache, ids[48:56])])
    assert torch.equal(cont, never_stopped)


def test_opening_a_session_of_another_storage_dtype_converts_it_with_a_warning(
    model, ids, tmp_path, caplog
):
    eng = _engine(model, tmp_path, "bfloat16")
    s = _prefilled(eng, ids)
    want = pack_state(s.cache)
    eng.save(s)
    eng.close()
    eng = _engine(model, tmp_path, "float32")  # widening: exact, with a warning
    with caplog.at_level("WARNING", logger="agentrt.engine.persistence"):
        s = eng.open_session("a")
    assert "holds K/V in bfloat16" in caplog.text and "kv_dtype='bfloat16'" in caplog.text
    got = pack_state(s.cache)
    assert got["layer.0.k"].dtype == torch.float32
    for key in want:
        assert torch.equal(got[key].to(want[key].dtype), want[key]), key
    s.prefill(ids[48:50])
    row = eng.save(s)  # the chain was bf16: the next save starts a float32 one
    assert row.kind == "full"
    eng.close()
    eng = _engine(model, tmp_path, "bfloat16")  # narrowing: rounded to bf16
    caplog.clear()
    with caplog.at_level("WARNING", logger="agentrt.engine.persistence"):
        s = eng.open_session("a")
    assert "rounding them" in caplog.text
    assert pack_state(s.cache)["layer.0.k"].dtype == torch.bfloat16
    eng.close()


@pytest.mark.parametrize("cpu_swap_budget", ["1GiB", 0], ids=["cpu", "disk"])
def test_swap_out_and_in_is_exact_and_half_size(model, ids, tmp_path, cpu_swap_budget):
    records = {}
    for kv_dtype in ("float32", "bfloat16"):
        eng = _engine(model, tmp_path / kv_dtype, kv_dtype, cpu_swap_budget=cpu_swap_budget)
        s = _prefilled(eng, ids)
        before = pack_state(s.cache)
        eng.swap.swap_out(s)
        records[kv_dtype] = s.swapped.nbytes
        assert eng.swap.where(s) == ("cpu" if cpu_swap_budget else "disk")
        eng.swap.swap_in(s)
        after = pack_state(s.cache)
        assert after.keys() == before.keys()
        for name, tensor in before.items():
            assert torch.equal(after[name], tensor) and after[name].dtype == tensor.dtype, name
        eng.close()
    kv32 = sum(before[k].nbytes for k in before if k.endswith((".k", ".v")))  # bf16 run
    assert records["float32"] - records["bfloat16"] == kv32  # only the K/V bytes halved


def _prefilled(eng, ids):
    s = eng.new_session(name="a")
    s.prefill(ids[:48])
    return s


def _kv_bytes(eng, session) -> int:
    """Bytes of the K/V tensors in the session's saved checkpoint file."""
    from agentrt.sessions.tensor_file import parse_safetensors

    eng.save(session)
    files = sorted((eng.persistence.layout.checkpoint_dir).rglob("*.safetensors"))
    assert len(files) == 1, files
    _, tensors = parse_safetensors(bytearray(files[0].read_bytes()))
    return sum(t.nbytes for name, t in tensors.items() if name.endswith((".k", ".v")))
