"""The DMS visibility rule (dms-reference.md §3): hard mask, soft training bias, window edges."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from agentrt.dms import DMSConfig, DMSModel
from agentrt.dms.masks import expand_to_query_heads, key_flags, training_bias, visibility_mask

from .tiny_models import adapter_model, assert_close, random_ids, tiny_hf

# dms-reference.md §3.5: w = 2, δ = [1, 1, 0, 1, 0, 0]; rows = query i, columns = key j.
WORKED_DECISIONS = [1, 1, 0, 1, 0, 0]
WORKED_TABLE = [
    [1, 0, 0, 0, 0, 0],
    [1, 1, 0, 0, 0, 0],
    [1, 1, 1, 0, 0, 0],
    [0, 1, 1, 1, 0, 0],
    [0, 1, 1, 1, 1, 0],
    [0, 1, 0, 1, 1, 1],
]


def brute_force_visible(decisions: list[int], window: int) -> list[list[int]]:
    """The rule written out per pair: j ≤ i and (i − j ≤ w or δ_{j+1} = 0), δ_T = 0."""
    seq = len(decisions)
    flag = [decisions[j + 1] if j + 1 < seq else 0 for j in range(seq)]
    return [
        [int(j <= i and (i - j <= window or not flag[j])) for j in range(seq)] for i in range(seq)
    ]


def test_worked_example_exact_table() -> None:
    dec = torch.tensor(WORKED_DECISIONS, dtype=torch.bool)[None, :, None]  # [1, 6, 1]
    mask = visibility_mask(dec, window=2)
    assert mask.shape == (1, 1, 6, 6) and mask.dtype == torch.bool
    assert mask[0, 0].int().tolist() == WORKED_TABLE
    # The decode walk-through of §3.5: query 5 sees exactly {1, 3, 4, 5}.
    assert mask[0, 0, 5].nonzero().flatten().tolist() == [1, 3, 4, 5]
    assert brute_force_visible(WORKED_DECISIONS, 2) == WORKED_TABLE


def test_key_flags_shift_left() -> None:
    dec = torch.tensor(WORKED_DECISIONS, dtype=torch.bool)[None, :, None]
    # e_j = δ_{j+1}: δ0 is dropped, the last key has no flag yet.
    assert key_flags(dec)[0, :, 0].int().tolist() == [1, 0, 1, 0, 0, 0]


def test_worked_example_training_bias_at_tiny_tau() -> None:
    """The soft bias with |u| huge is log of the worked table (0 / very negative / −inf)."""
    z = torch.tensor([2.0 if d else -2.0 for d in WORKED_DECISIONS])[None, :, None]
    bias = training_bias(z / 1e-4, window=2)[0, 0]
    table = torch.tensor(WORKED_TABLE, dtype=torch.bool)
    assert torch.equal(bias[table], torch.zeros(int(table.sum())))  # visible: exactly 0 added
    hidden = bias[~table]
    assert (hidden < -1e4).all(), hidden  # invisible: log(1 − σ(u)) ≪ 0 or −inf
    assert torch.equal(bias.exp() > 0.5, table)


@settings(max_examples=60, deadline=None)
@given(
    decisions=st.lists(st.integers(0, 1), min_size=1, max_size=12),
    window=st.integers(0, 13),
)
def test_visibility_mask_matches_rule(decisions: list[int], window: int) -> None:
    dec = torch.tensor(decisions, dtype=torch.bool)[None, :, None]
    got = visibility_mask(dec, window)[0, 0].int().tolist()
    assert got == brute_force_visible(decisions, window)


def test_visibility_mask_per_batch_and_head() -> None:
    """Each (batch, kv head) stream uses only its own decisions."""
    gen = torch.Generator().manual_seed(3)
    dec = torch.rand(3, 9, 4, generator=gen) > 0.5  # [B, T, H]
    mask = visibility_mask(dec, window=1)
    assert mask.shape == (3, 4, 9, 9)
    for b in range(3):
        for h in range(4):
            expected = brute_force_visible(dec[b, :, h].int().tolist(), 1)
            assert mask[b, h].int().tolist() == expected, (b, h)


def test_training_bias_values() -> None:
    """0 inside the window, log(1 − σ(u_{j+1})) outside, −inf above the diagonal."""
    gen = torch.Generator().manual_seed(0)
    seq, window = 7, 2
    u = torch.randn(2, seq, 3, generator=gen, dtype=torch.float64) * 3  # [B, T, H]
    bias = training_bias(u, window)
    assert bias.shape == (2, 3, seq, seq) and bias.dtype == torch.float64
    for b in range(2):
        for h in range(3):
            for i in range(seq):
                for j in range(seq):
                    got = bias[b, h, i, j].item()
                    if j > i:
                        assert got == -math.inf
                    elif i - j <= window:
                        assert got == 0.0
                    else:
                        p = 1 / (1 + math.exp(-u[b, j + 1, h].item()))
                        assert got == pytest.approx(math.log(1 - p), rel=1e-12, abs=1e-12)


def test_training_bias_gradient_flows_to_next_token_logit() -> None:
    """The bias of key j depends on u_{j+1} only (the decision of the next token)."""
    seq, window = 6, 1
    u = torch.zeros(1, seq, 1, dtype=torch.float64, requires_grad=True)
    bias = training_bias(u, window)
    finite = bias[torch.isfinite(bias)]
    finite.sum().backward()
    # key j is outside the window for queries i ≥ j + 2: count (seq − j − 2) per key;
    # d/du log σ(−u) at u = 0 is −1/2, carried by u_{j+1}.
    expected = [0.0] + [-0.5 * max(0, seq - (t - 1) - window - 1) for t in range(1, seq)]
    assert u.grad[0, :, 0].tolist() == pytest.approx(expected)


def test_expand_to_query_heads_is_grouped() -> None:
    """Query head q uses KV head q // g (repeat_interleave, the GQA layout)."""
    mask = torch.arange(3.0)[None, :, None, None].expand(1, 3, 2, 2)  # kv head h filled with h
    out = expand_to_query_heads(mask, group_size=2)
    assert out.shape == (1, 6, 2, 2)
    assert out[0, :, 0, 0].tolist() == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("seq", [pytest.param(6, id="T6"), pytest.param(9, id="T9")])
def test_window_edge_in_the_model(seq: int) -> None:
    """w = T − 1: every key stays in the window, so logits equal HF's even with evictions.
    w = T − 2: key 0 leaves the window for the last query only (if δ_1 = 1 somewhere)."""
    dms = DMSConfig(window_size=seq - 1, initial_alpha_offset=-50.0, separate_alpha=True)
    model = adapter_model("llama-gqa", dms=dms, adapter_std=0.3)
    ids = random_ids(1, seq, seed=5)
    with torch.no_grad():
        hf_logits = model.hf(ids).logits
    full = model.forward_reference(ids)
    assert full.decisions.any(), "precondition: some tokens are marked"
    assert_close("w=T-1 vs HF", hf_logits, full.logits, atol=1e-5)

    model.dms = dms.replace(window_size=seq - 2)
    edge = model.forward_reference(ids)
    assert torch.equal(edge.decisions, full.decisions)  # decisions do not depend on w
    assert edge.decisions[0, 0, 1].any(), "precondition: δ_1 = 1 in layer 0"
    # Only the last query loses a key, so all earlier positions are unchanged …
    assert_close("w=T-2 prefix", hf_logits[:, :-1], edge.logits[:, :-1], atol=1e-5)
    # … and the last position changes.
    assert (edge.logits[:, -1] - hf_logits[:, -1]).abs().max() > 1e-3


def test_reference_mask_removes_marked_keys_from_attention() -> None:
    """A model-level check of the mask: with w = 0 and every token marked, each query sees
    only itself and unmarked keys; forcing everything marked equals a model whose
    attention sees only the diagonal (i.e. no dependence on earlier tokens)."""
    dms = DMSConfig(window_size=0, initial_alpha_offset=-1e6)  # z ≫ 0: all marked
    model = DMSModel(tiny_hf("llama-gqa"), dms)
    ids = random_ids(1, 5, seed=1)
    out = model.forward_reference(ids)
    assert out.decisions.all()
    # Changing an earlier token cannot affect a later one: each position is context-free.
    ids2 = ids.clone()
    ids2[0, 0] = (ids[0, 0] % 90) + 2
    out2 = model.forward_reference(ids2)
    assert_close("later positions", out.logits[:, 1:], out2.logits[:, 1:], atol=1e-6)
    assert (out.logits[:, 0] - out2.logits[:, 0]).abs().max() > 1e-3


@pytest.mark.parametrize(
    "seq", [pytest.param(1, id="T1"), pytest.param(2, id="T2"), pytest.param(3, id="T3")]
)
def test_sequences_within_the_window_are_dense(seq: int) -> None:
    """T ≤ w + 1: the newest w + 1 tokens are always attended, whatever the decisions."""
    dms = DMSConfig(window_size=2, initial_alpha_offset=-1e6, tau=1e-4)  # everything marked
    model = DMSModel(tiny_hf("qwen3-qknorm"), dms)
    dense = DMSModel(model.hf, dms.replace(disable_eviction=True))
    ids = random_ids(2, seq)
    out = model.forward_reference(ids)
    assert out.decisions.all() and out.decisions.shape[2] == seq
    expected = dense.forward_reference(ids).logits
    assert_close("reference", expected, out.logits, atol=1e-6)
    train = model.forward_train(ids, noise_seed=0)
    assert train.eviction_fraction.min() == 1.0
    assert_close("train", expected, train.logits.detach(), atol=1e-6)
