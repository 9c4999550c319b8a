"""Cache-policy baselines equal a naive dense implementation of each policy; budgets hold.

The oracle (`reference_logits`) is independent of dms/serving.py and of the policies'
code: a per-chunk loop over the HF modules with an explicit kept set per (layer, KV head)
and full softmax attention over (kept ∪ causal chunk), filtered by the policy's rule.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

from agentrt.dms import DMSModel
from agentrt.dms.policies import (
    POLICY_NAMES,
    DensePolicy,
    H2OPolicy,
    SlidingWindowPolicy,
    StreamingLLMPolicy,
    TOVAPolicy,
    make_policy,
)
from agentrt.dms.serving import StepItem
from agentrt.errors import ConfigError

from .policies_matrix import policy_cases

VOCAB = 64
CHUNKS = [7, 1, 1, 5, 1, 4, 3]  # a prefill, decode steps, more prefills: 22 tokens


def tiny_model(arch: str = "qwen3", seed: int = 0) -> DMSModel:
    """A plain 2-layer GQA model (4 query heads, 2 KV heads, head_dim 16), fp32, random weights."""
    torch.manual_seed(seed)
    common = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
    )
    cfg = Qwen3Config(**common) if arch == "qwen3" else LlamaConfig(**common)
    return DMSModel(AutoModelForCausalLM.from_config(cfg).eval())


@pytest.fixture(scope="module")
def model() -> DMSModel:
    """The shared tiny Qwen3 model."""
    return tiny_model()


def token_ids(n: int, seed: int) -> torch.Tensor:
    """n random token ids [n] int64."""
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed))


# -- the oracle ------------------------------------------------------------------------------


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on x [T, H, d] with cos/sin [T, d] (rotate-half convention)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


def _rule(policy: Any, i: int, j: int) -> bool:
    """Whether the policy's position rule lets query i see key j ≤ i (score policies: always)."""
    if isinstance(policy, SlidingWindowPolicy):
        return i - j < policy.budget
    if isinstance(policy, StreamingLLMPolicy):
        return j < policy.sinks or i - j < policy.budget - policy.sinks
    return True


def _evict(
    policy: Any, kept: list[int], last: dict[int, float], acc: dict[int, float], newest: int
) -> list[int]:
    """The kept set after a chunk: TOVA by the last query's weights, H2O by accumulated mass."""
    excess = len(kept) - getattr(policy, "budget", len(kept))
    if not isinstance(policy, TOVAPolicy | H2OPolicy) or excess <= 0:
        return kept
    if isinstance(policy, TOVAPolicy):
        ranked = sorted(kept, key=lambda j: (last[j], j))
    else:
        ranked = sorted((j for j in kept if j <= newest - policy.recent), key=lambda j: (acc[j], j))
    gone = set(ranked[:excess])
    for j in gone:
        acc.pop(j, None)
    return [j for j in kept if j not in gone]


@torch.no_grad()
def reference_logits(
    model: DMSModel, policy: Any, ids: torch.Tensor, sizes: list[int]
) -> torch.Tensor:
    """Logits [T, V] of the policy fed in chunks of `sizes`, by a naive loop over HF modules."""
    hf = model.hf
    layers = hf.model.layers
    cfg = hf.config
    n_kv, group = cfg.num_key_value_heads, cfg.num_attention_heads // cfg.num_key_value_heads
    d = cfg.head_dim
    keys: list[list[torch.Tensor]] = [[] for _ in layers]  # per layer: [T, H_kv, d] per chunk
    values: list[list[torch.Tensor]] = [[] for _ in layers]
    kept = [[[] for _ in range(n_kv)] for _ in layers]  # positions per (layer, KV head)
    acc = [[{} for _ in range(n_kv)] for _ in layers]  # H2O: position → attention mass
    out, start = [], 0
    for n in sizes:
        pos = list(range(start, start + n))
        h = hf.model.embed_tokens(ids[start : start + n][None])
        cos, sin = hf.model.rotary_emb(h, torch.tensor(pos)[None])
        for li, layer in enumerate(layers):
            attn = layer.self_attn
            x = layer.input_layernorm(h)[0]
            q = attn.q_proj(x).view(n, -1, d)
            k = attn.k_proj(x).view(n, n_kv, d)
            v = attn.v_proj(x).view(n, n_kv, d)
            if hasattr(attn, "q_norm"):
                q, k = attn.q_norm(q), attn.k_norm(k)
            q, k = _rotate(q, cos[0], sin[0]), _rotate(k, cos[0], sin[0])
            keys[li].append(k)
            values[li].append(v)
            all_k, all_v = torch.cat(keys[li]), torch.cat(values[li])  # [start + n, H_kv, d]
            o = torch.zeros_like(q)
            for kh in range(n_kv):
                heads = slice(kh * group, (kh + 1) * group)
                last: dict[int, float] = {}
                for t, i in enumerate(pos):
                    seen = [j for j in kept[li][kh] + pos[: t + 1] if _rule(policy, i, j)]
                    idx = torch.tensor(seen)
                    probs = (q[t, heads] @ all_k[idx, kh].T * attn.scaling).softmax(dim=-1)
                    o[t, heads] = probs @ all_v[idx, kh]
                    last = dict(zip(seen, probs.mean(dim=0).tolist(), strict=True))
                    for j, p in last.items():
                        acc[li][kh][j] = acc[li][kh].get(j, 0.0) + p
                survivors = [j for j in kept[li][kh] + pos if _rule(policy, pos[-1], j)]
                kept[li][kh] = _evict(policy, survivors, last, acc[li][kh], pos[-1])
            h = h + attn.o_proj(o.reshape(1, n, -1))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        out.append(hf.lm_head(hf.model.norm(h))[0])
        start += n
    return torch.cat(out)


# -- helpers on the serving side ---------------------------------------------------------------


def stream_positions(cache: Any, layer: int, head: int) -> list[int]:
    """Absolute positions held by one stream, read from the pool's slot_pos."""
    bs = cache.pool.block_size
    blocks = cache.blocks[layer][head]
    return [
        int(cache.pool.slot_pos[blocks[s // bs], s % bs]) for s in range(cache.lens[layer][head])
    ]


def expected_positions(policy: Any, n: int) -> tuple[set[int], bool]:
    """(positions the policy must hold after n tokens, whether that set is exact)."""
    if isinstance(policy, SlidingWindowPolicy):
        return set(range(max(0, n - policy.budget), n)), True
    if isinstance(policy, StreamingLLMPolicy):
        tail = policy.budget - policy.sinks
        return {j for j in range(n) if j < policy.sinks or j >= n - tail}, True
    if isinstance(policy, H2OPolicy):
        return set(range(max(0, n - policy.recent), n)), False
    if isinstance(policy, TOVAPolicy):
        return set(), False
    return set(range(n)), True


def serve(
    model: DMSModel, policy: Any, ids: torch.Tensor, sizes: list[int], block_size: int
) -> torch.Tensor:
    """Logits [T, V] of the served policy fed in chunks; checks the cache after every step."""
    pool = model.make_pool(num_blocks=400, block_size=block_size)
    cache = model.new_cache(pool, window=policy.window)
    out, n = [], 0
    for size in sizes:
        out.append(
            model.step([StepItem(cache, ids[n : n + size], all_logits=True)], policy=policy)[0]
        )
        n += size
        check_cache(policy, cache, n)
    cache.free()
    assert pool.num_free == pool.num_blocks, (pool.num_free, pool.num_blocks)
    return torch.cat(out)


def check_cache(policy: Any, cache: Any, n: int) -> None:
    """Every stream holds min(n, budget) distinct positions, including the ones the policy needs."""
    budget = getattr(policy, "budget", n)
    need, exact = expected_positions(policy, n)
    for layer in range(cache.num_layers):
        for head in range(cache.num_kv_heads):
            held = stream_positions(cache, layer, head)
            where = f"{policy} layer {layer} head {head} after {n} tokens: {sorted(held)}"
            assert len(held) == len(set(held)) == min(n, budget), where
            assert all(0 <= p < n for p in held), where
            assert (set(held) == need) if exact else need <= set(held), where


# -- tests ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cls", "kwargs"), policy_cases())
@pytest.mark.parametrize(
    ("mode", "block_size"),
    [pytest.param("tokens", 4, id="tokens"), pytest.param("chunks", 3, id="chunks")],
)
def test_matches_reference(model, cls, kwargs, mode, block_size):
    """Serving the policy token by token or in chunks equals the naive oracle; budgets hold."""
    policy = cls(**kwargs)
    ids = token_ids(sum(CHUNKS), seed=len(kwargs) + block_size)
    sizes = [1] * len(ids) if mode == "tokens" else CHUNKS
    out = serve(model, policy, ids, sizes, block_size)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(
        out, reference_logits(model, policy, ids, sizes), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize(("cls", "kwargs"), policy_cases())
def test_ragged_sessions_match_reference(model, cls, kwargs):
    """Sessions sharing ragged steps (prefill + decode mixed) each equal their own oracle run."""
    policy = cls(**kwargs)
    pool = model.make_pool(num_blocks=600, block_size=2)
    seqs = [token_ids(n, seed=n) for n in (17, 6, 12)]
    caches = [model.new_cache(pool, window=policy.window) for _ in seqs]
    sizes: list[list[int]] = [[] for _ in seqs]
    logits: list[list[torch.Tensor]] = [[] for _ in seqs]
    done = [0] * len(seqs)
    rng = random.Random(7)
    while any(d < s.numel() for d, s in zip(done, seqs, strict=True)):
        batch, owners = [], []
        for i, (cache, seq) in enumerate(zip(caches, seqs, strict=True)):
            if done[i] < seq.numel():
                n = min(rng.choice([1, 1, 3, 6]), seq.numel() - done[i])
                batch.append(StepItem(cache, seq[done[i] : done[i] + n], all_logits=True))
                owners.append(i)
                sizes[i].append(n)
                done[i] += n
        for i, out in zip(owners, model.step(batch, policy=policy), strict=True):
            logits[i].append(out)
            check_cache(policy, caches[i], sum(sizes[i]))
    for seq, parts, cut in zip(seqs, logits, sizes, strict=True):
        ref = reference_logits(model, policy, seq, cut)
        torch.testing.assert_close(torch.cat(parts), ref, atol=1e-5, rtol=1e-5)
    for cache in caches:
        cache.free()
    assert pool.num_free == pool.num_blocks


@pytest.mark.parametrize("cls", [TOVAPolicy, H2OPolicy])
def test_llama_score_policy_matches_reference(cls):
    """A Llama (no q/k norm) model under a score policy equals the oracle too."""
    model = tiny_model("llama", seed=1)
    policy = cls(budget=5, recent=2) if cls is H2OPolicy else cls(budget=5)
    ids = token_ids(16, seed=3)
    sizes = [6, 1, 1, 4, 1, 3]
    out = serve(model, policy, ids, sizes, block_size=4)
    torch.testing.assert_close(
        out, reference_logits(model, policy, ids, sizes), atol=1e-5, rtol=1e-5
    )


def test_dense_policy_equals_hf_forward(model):
    """DensePolicy keeps everything: logits equal HF's own forward."""
    ids = token_ids(15, seed=11)
    out = serve(model, DensePolicy(), ids, [8, 1, 6], block_size=4)
    torch.testing.assert_close(out, model.hf(ids[None]).logits[0], atol=1e-5, rtol=1e-5)


def test_rule_policies_are_chunking_invariant(model):
    """Window and StreamingLLM are pure position rules: one prefill equals token by token."""
    ids = token_ids(20, seed=5)
    for policy in (SlidingWindowPolicy(budget=6), StreamingLLMPolicy(budget=7, sinks=3)):
        whole = serve(model, policy, ids, [20], block_size=4)
        tokens = serve(model, policy, ids, [1] * 20, block_size=4)
        torch.testing.assert_close(whole, tokens, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("policy", [TOVAPolicy(budget=4), SlidingWindowPolicy(budget=4)], ids=str)
def test_fork_under_policy_continues_like_a_copy(model, policy):
    """Both branches of a fork (copy-on-write blocks, evictions on shared blocks) equal the oracle."""
    pool = model.make_pool(num_blocks=200, block_size=2)
    prefix, tail_a, tail_b = token_ids(9, seed=1), token_ids(5, seed=2), token_ids(4, seed=3)
    parent = model.new_cache(pool, window=policy.window)
    model.step([StepItem(parent, prefix)], policy=policy)
    child = parent.fork()
    for cache, tail, sizes in ((parent, tail_a, [2, 1, 2]), (child, tail_b, [1, 1, 1, 1])):
        out, n = [], 0
        for size in sizes:
            item = StepItem(cache, tail[n : n + size], all_logits=True)
            out.append(model.step([item], policy=policy)[0])
            n += size
            check_cache(policy, cache, 9 + n)
        ref = reference_logits(model, policy, torch.cat([prefix, tail]), [9, *sizes])
        torch.testing.assert_close(torch.cat(out), ref[9:], atol=1e-5, rtol=1e-5)
    parent.free()
    child.free()
    assert pool.num_free == pool.num_blocks


def test_h2o_forgets_freed_sessions(model):
    """H2O's per-session scores are dropped once the session cache is freed."""
    policy = H2OPolicy(budget=3, recent=1)
    pool = model.make_pool(num_blocks=100, block_size=4)
    first, second = (model.new_cache(pool, window=policy.window) for _ in range(2))
    model.step([StepItem(first, token_ids(6, seed=1))], policy=policy)
    assert first in policy._scores
    first.free()
    model.step([StepItem(second, token_ids(2, seed=2))], policy=policy)
    assert first not in policy._scores and second in policy._scores


# -- registry and validation ---------------------------------------------------------------------


def test_make_policy_builds_every_name():
    """Every registered name builds its class; "dms" means the model's own decisions (None)."""
    assert make_policy("dms") is None
    assert make_policy("dense") == DensePolicy()
    assert make_policy("window", budget=8) == SlidingWindowPolicy(budget=8)
    assert make_policy("streaming", budget=8).window == 3  # 8 − 4 sinks − 1
    assert make_policy("tova", budget=8) == TOVAPolicy(budget=8)
    assert make_policy("h2o", budget=8, recent=2) == H2OPolicy(budget=8, recent=2)
    assert POLICY_NAMES == ("dms", "dense", "window", "streaming", "tova", "h2o")


def test_make_policy_rejects_unknown_names_and_keys():
    """Unknown names and keys raise one ConfigError listing the valid choices."""
    with pytest.raises(ConfigError, match=r"unknown cache policy 'lru'") as err:
        make_policy("lru")
    assert "dms, dense, window, streaming, tova, h2o" in str(err.value)
    with pytest.raises(
        ConfigError, match=r"unknown parameter 'size'; missing parameter 'budget'"
    ) as err:
        make_policy("tova", size=3)
    assert "tova takes: budget" in str(err.value)
    with pytest.raises(ConfigError, match=r"missing parameter 'recent'"):
        make_policy("h2o", budget=4)
    with pytest.raises(ConfigError, match=r"'dms' takes no parameters"):
        make_policy("dms", budget=4)


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("window", {"budget": 0}, r"budget=0 must be an int >= 1"),
        ("window", {"budget": True}, r"budget=True must be an int >= 1"),
        ("tova", {"budget": 2.5}, r"budget=2.5 must be an int >= 1"),
        ("streaming", {"budget": 4, "sinks": 4}, r"sinks=4 must be < budget=4"),
        ("streaming", {"budget": 0, "sinks": -1}, r"budget=0 .*; sinks=-1 must be an int >= 0"),
        ("h2o", {"budget": 3, "recent": 4}, r"recent=4 must be <= budget=3"),
    ],
)
def test_bad_values_raise_config_error(name, kwargs, message):
    """Out-of-range hyper-parameters raise a ConfigError naming every bad key and value."""
    with pytest.raises(ConfigError, match=message):
        make_policy(name, **kwargs)
