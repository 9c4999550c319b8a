"""The paged serving forward equals the dense DMS reference, however tokens are fed."""

from __future__ import annotations

import random

import pytest
import torch

from agentrt.dms.serving import StepItem
from agentrt.errors import BudgetError

from .serving_helpers import kept_plus_window, poisoned_pool, run_chunks, tiny_model

# q-neuron decision logit is 100·r − b with r ≈ N(0, 1): b steers the eviction rate.
RATES = [
    pytest.param(400.0, id="evict0"),
    pytest.param(5.0, id="evict50"),
    pytest.param(-165.0, id="evict95"),
]


def _ids(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 97, (n,), generator=g)


def _reference(model, ids):
    ref = model.forward_reference(ids[None])
    return ref.logits[0], ref.decisions


@pytest.mark.parametrize("offset", RATES)
@pytest.mark.parametrize(
    ("window", "block"),
    [
        pytest.param(3, 16, id="ring-lt-block"),
        pytest.param(8, 4, id="ring-gt-block"),
        pytest.param(5, 1, id="block1"),
        pytest.param(0, 64, id="w0-block64"),
    ],
)
@pytest.mark.parametrize("mode", ["whole", "chunks", "tokens"])
def test_matches_reference(offset, window, block, mode):
    """(a) one prefill, (b) random chunks, (c) token by token: same logits as the dense reference."""
    model = tiny_model(window=window, offset=offset)
    ids = _ids(45, seed=int(window * 7 + block))
    ref, decisions = _reference(model, ids)
    cache = model.new_cache(poisoned_pool(model, num_blocks=2000, block_size=block))
    rng = random.Random(block)
    if mode == "whole":
        sizes = [45]
    elif mode == "tokens":
        sizes = [1] * 45
    else:
        sizes = []
        while sum(sizes) < 45:
            sizes.append(min(rng.randint(1, 9), 45 - sum(sizes)))
    out = run_chunks(model, cache, ids, sizes)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    expected = kept_plus_window(decisions, 45, window)
    assert torch.equal(torch.tensor(cache.lens), expected), (cache.lens, expected)


@pytest.mark.parametrize("flavour", ["qneuron", "adapter"])
def test_multi_turn_interleavings(flavour):
    """(d) prefill, generate k, prefill, generate … in random interleavings, greedy continuation."""
    offset = 5.0 if flavour == "qneuron" else 0.5
    model = tiny_model(flavour=flavour, window=4, offset=offset)
    rng = random.Random(3)
    cache = model.new_cache(poisoned_pool(model, num_blocks=1000, block_size=4))
    tokens: list[int] = []
    logits_seen = []
    for turn in range(4):
        prompt = _ids(rng.randint(1, 12), seed=turn).tolist()
        out = model.step([StepItem(cache, torch.tensor(prompt), all_logits=True)])[0]
        tokens += prompt
        logits_seen.append(out)
        for _ in range(rng.randint(1, 5)):  # greedy decode
            nxt = int(logits_seen[-1][-1].argmax())
            out = model.step([StepItem(cache, torch.tensor([nxt]), all_logits=True)])[0]
            tokens.append(nxt)
            logits_seen.append(out)
    ref, _ = _reference(model, torch.tensor(tokens))
    torch.testing.assert_close(torch.cat(logits_seen), ref, atol=1e-5, rtol=1e-5)


def test_ragged_batch_of_sessions():
    """(e) several sessions of different lengths in one ragged batch, mixed prefill and decode."""
    model = tiny_model(window=3, offset=5.0)
    pool = poisoned_pool(model, num_blocks=2000, block_size=8)
    seqs = [_ids(n, seed=n) for n in (30, 7, 19, 1)]
    caches = [model.new_cache(pool) for _ in seqs]
    logits = [[] for _ in seqs]
    pos = [0] * len(seqs)
    rng = random.Random(0)
    while any(p < s.numel() for p, s in zip(pos, seqs, strict=True)):
        batch, owners = [], []
        for i, (cache, seq) in enumerate(zip(caches, seqs, strict=True)):
            if pos[i] < seq.numel():
                n = min(rng.choice([1, 1, 5, 11]), seq.numel() - pos[i])
                batch.append(StepItem(cache, seq[pos[i] : pos[i] + n], all_logits=True))
                owners.append(i)
                pos[i] += n
        for i, out in zip(owners, model.step(batch), strict=True):
            logits[i].append(out)
    for seq, outs in zip(seqs, logits, strict=True):
        ref, _ = _reference(model, seq)
        torch.testing.assert_close(torch.cat(outs), ref, atol=1e-5, rtol=1e-5)


def test_decode_kernel_path_equals_prefill_path():
    """Single-token steps give the same logits through the decode and the prefill attention paths."""
    model = tiny_model(window=2, offset=5.0)
    ids = _ids(20, seed=9)
    outs = []
    for decode in (True, False):
        cache = model.new_cache(poisoned_pool(model, num_blocks=500, block_size=2))
        outs.append(run_chunks(model, cache, ids, [1] * 20, decode_kernel=decode))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-6, rtol=1e-6)


def test_float64_exact():
    """In float64 the paged path equals the reference to 1e-10."""
    model = tiny_model(window=3, offset=5.0, dtype=torch.float64)
    ids = _ids(33, seed=2)
    ref, _ = _reference(model, ids)
    cache = model.new_cache(poisoned_pool(model, num_blocks=600, block_size=4))
    out = run_chunks(model, cache, ids, [10, 1, 1, 13, 8])
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)


def test_plain_model_is_dense_and_matches_hf():
    """A model without DMS keeps every token and equals HF's own forward."""
    model = tiny_model(window=3)
    model.dms = None
    ids = _ids(25, seed=4)
    cache = model.new_cache(poisoned_pool(model, num_blocks=400, block_size=4))
    out = run_chunks(model, cache, ids, [9, 1, 15])
    torch.testing.assert_close(out, model.hf(ids[None]).logits[0], atol=1e-5, rtol=1e-5)
    assert cache.lens == [[25, 25], [25, 25]]


def test_memory_accounting_and_stats():
    """slots == kept + min(n, w+1); pool bytes == blocks × block bytes; stats are consistent."""
    model = tiny_model(window=4, offset=-100.0)  # ~85% evicted
    pool = poisoned_pool(model, num_blocks=500, block_size=4)
    cache = model.new_cache(pool)
    ids = _ids(60, seed=5)
    run_chunks(model, cache, ids, [17, 1, 1, 30, 11])
    _, decisions = _reference(model, ids)
    expected = kept_plus_window(decisions, 60, 4)
    assert torch.equal(torch.tensor(cache.lens), expected)
    assert pool.bytes_used == pool.num_used * pool.bytes_per_block
    assert pool.num_used == cache.blocks_held
    st = cache.stats()
    assert st["tokens"] == 60 and st["slots"] == int(expected.sum())
    assert st["compression_ratio"] == pytest.approx(60 * 4 / int(expected.sum()))
    assert st["kv_bytes"] == cache.blocks_held * pool.bytes_per_block
    assert st["compression_ratio"] > 2.0
    cache.free()
    assert pool.num_free == pool.num_blocks


def test_fork_branches_are_independent_copies():
    """Both branches of a fork continue exactly like independent sessions; blocks freed at the last owner."""
    model = tiny_model(window=3, offset=5.0)
    pool = poisoned_pool(model, num_blocks=800, block_size=4)
    prefix, a_tail, b_tail = _ids(21, seed=1), _ids(9, seed=2), _ids(12, seed=3)
    parent = model.new_cache(pool)
    run_chunks(model, parent, prefix, [21])
    used_before = pool.num_used
    child = parent.fork()
    assert pool.num_used == used_before  # shared, nothing copied yet
    out_a = run_chunks(model, parent, a_tail, [4, 1, 4])
    out_b = run_chunks(model, child, b_tail, [1] * 12)
    ref_a, _ = _reference(model, torch.cat([prefix, a_tail]))
    ref_b, _ = _reference(model, torch.cat([prefix, b_tail]))
    torch.testing.assert_close(out_a, ref_a[21:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_b, ref_b[21:], atol=1e-5, rtol=1e-5)
    parent.free()
    assert pool.num_used == child.blocks_held  # the child's blocks (shared or copied) survive
    out_b2 = run_chunks(model, child, _ids(3, seed=4), [3])
    ref_b2, _ = _reference(model, torch.cat([prefix, b_tail, _ids(3, seed=4)]))
    torch.testing.assert_close(out_b2, ref_b2[33:], atol=1e-5, rtol=1e-5)
    child.free()
    assert pool.num_free == pool.num_blocks


def test_budget_error_changes_nothing():
    """A step that cannot fit raises BudgetError with the numbers; the session stays usable."""
    model = tiny_model(window=3, offset=400.0)  # nothing evicted
    pool = poisoned_pool(
        model, num_blocks=12, block_size=4
    )  # 4 streams → 3 blocks each = 12 tokens
    cache = model.new_cache(pool)
    ids = _ids(14, seed=6)
    run_chunks(model, cache, ids[:8], [8])
    lens_before = [list(r) for r in cache.lens]
    with pytest.raises(BudgetError, match=r"needs? \d+ more KV blocks .* only \d+ of 12 are free"):
        model.step([StepItem(cache, ids[8:14])])
    assert cache.lens == lens_before and cache.next_pos == 8
    out = run_chunks(model, cache, ids[8:12], [4])  # still fits: 12 tokens
    ref, _ = _reference(model, ids[:12])
    torch.testing.assert_close(out, ref[8:12], atol=1e-5, rtol=1e-5)


def test_the_lm_head_runs_over_the_rows_asked_for_only() -> None:
    """A prefill chunk's last-token logits equal the LM head applied to its last row alone."""
    model = tiny_model(window=2)
    pool = model.make_pool(num_blocks=64, block_size=4)
    ids = torch.arange(3, 23)
    a, b = model.new_cache(pool), model.new_cache(pool)
    calls: list[int] = []
    hook = model.hf.lm_head.register_forward_pre_hook(lambda m, inp: calls.append(inp[0].shape[0]))
    try:
        last, every = model.step([StepItem(a, ids[:12]), StepItem(b, ids[:12], all_logits=True)])
    finally:
        hook.remove()
    assert calls == [13]  # 1 row for the first session, 12 for the second
    assert every.shape == (12, model.vocab_size) and last.shape == (model.vocab_size,)
    torch.testing.assert_close(last, every[-1], atol=1e-5, rtol=1e-5)
