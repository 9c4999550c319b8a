"""CPU weight layout: same values, wide projections column-major, serving unchanged."""

from __future__ import annotations

import pytest
import torch

from agentrt.dms import DMSModel
from agentrt.dms.cpu_layout import cpu_path, prepare_cpu_linears, undo_cpu_linears
from agentrt.dms.serving import StepItem
from agentrt.kernels.cpu_linear import GEMV, ONEDNN, onednn_linear_available
from agentrt.sessions.fingerprint import state_dict_digest
from tests.dms.serving_helpers import tiny_model
from tests.dms.tiny_models import random_ids, tiny_hf

pytestmark = pytest.mark.skipif(not onednn_linear_available(), reason="torch without oneDNN")


def _column_major(w: torch.Tensor) -> bool:
    return w.t().is_contiguous() and not w.is_contiguous()


@pytest.mark.parametrize("arch", ["llama-gqa", "llama-tied", "qwen2-bias"])
def test_layout_marks_and_values(arch: str) -> None:
    hf = tiny_hf(arch)
    before = {k: v.clone() for k, v in hf.state_dict().items()}
    digest = state_dict_digest(DMSModel(hf))
    assert prepare_cpu_linears(hf) > 0
    for name, value in hf.state_dict().items():  # same values, the fingerprint holds
        assert torch.equal(value, before[name]), name
    assert state_dict_digest(DMSModel(hf)) == digest
    for layer in hf.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        for wide in (attn.q_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj):  # out >= in
            assert _column_major(wide.weight) and cpu_path(wide) == GEMV
        for narrow in (attn.k_proj, attn.v_proj, mlp.down_proj):
            assert narrow.weight.is_contiguous() and cpu_path(narrow) == GEMV
    head, embed = hf.lm_head, hf.get_input_embeddings()
    if arch == "llama-tied":  # the embedding lookup keeps its row-major table
        assert head.weight is embed.weight and head.weight.is_contiguous()
        assert cpu_path(head) == ONEDNN
    else:
        assert _column_major(head.weight) and cpu_path(head) == GEMV
    assert prepare_cpu_linears(hf) == 0  # idempotent
    undo_cpu_linears(hf)
    assert all(p.is_contiguous() for p in hf.parameters())
    assert cpu_path(hf.lm_head) is None


def test_bf16_model_untouched() -> None:
    hf = tiny_hf("llama-gqa", dtype=torch.bfloat16)
    assert prepare_cpu_linears(hf) == 0
    assert all(p.is_contiguous() for p in hf.parameters())


@pytest.mark.parametrize("flavour", ["qneuron", "adapter"])
def test_serving_matches_unprepared_model(flavour: str) -> None:
    """Prefill and decode logits with the CPU layout = without it (fp32 rounding apart)."""
    ids = random_ids(1, 40, seed=3)[0]
    outs = []
    for prepare in (False, True):
        model = tiny_model(flavour=flavour, window=4, offset=0.0, arch="llama")
        if prepare:
            model.prepare_for_serving()
        pool = model.make_pool(num_blocks=64, block_size=8)
        cache = model.new_cache(pool)
        logits = [model.step([StepItem(cache, ids[:24], all_logits=True)])[0]]
        for t in range(24, 40):  # one row per step: the GEMV routine
            logits.append(model.step([StepItem(cache, ids[t : t + 1])])[0].reshape(1, -1))
        outs.append(torch.cat(logits))
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-4)


def test_save_after_prepare_round_trips(tmp_path) -> None:
    """A served (laid out) model still saves the same weights."""
    from transformers import AutoModelForCausalLM

    hf = tiny_hf("llama-gqa")
    prepare_cpu_linears(hf)
    DMSModel(hf).save_pretrained(tmp_path)
    back = AutoModelForCausalLM.from_pretrained(tmp_path)
    for name, value in back.state_dict().items():
        assert torch.equal(value, hf.state_dict()[name]), name


def test_hf_baseline_is_an_untouched_copy() -> None:
    """The benchmarks' HF side: same values as the served model, row-major, unmarked,
    while the served model keeps its layout."""
    from agentrt.bench.workload import hf_baseline

    model = tiny_model(arch="llama")
    model.prepare_for_serving()
    twin = hf_baseline(model)
    assert twin.hf is not model.hf and twin.tokenizer is model.tokenizer
    assert _column_major(model.hf.model.layers[0].mlp.gate_proj.weight)
    assert all(p.is_contiguous() for p in twin.hf.parameters())
    assert all(cpu_path(m) is None for m in twin.hf.modules())
    served = model.hf.state_dict()
    for name, value in twin.hf.state_dict().items():
        assert torch.equal(value, served[name]), name
