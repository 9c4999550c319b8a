"""Engine: batched = unbatched, swapping is exact, budgets, single-writer sessions, threads."""

from __future__ import annotations

import threading

import pytest
import torch

from agentrt import Engine
from agentrt.errors import BudgetError, SessionError
from tests.dms.serving_helpers import tiny_model


def _prompt(n: int, seed: int) -> list[int]:
    return torch.randint(0, 97, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.fixture(scope="module")
def model():
    return tiny_model(window=3, offset=5.0)


def _alone(model, prompts, new_tokens):
    """Each session served by itself in its own engine: the unbatched reference."""
    out = []
    for p, n in zip(prompts, new_tokens, strict=True):
        eng = Engine(model, num_blocks=400, block_size=4)
        s = eng.new_session()
        s.prefill(p)
        out.append(list(s.generate(n)))
        eng.close()
    return out


def test_batched_equals_unbatched(model):
    """N sessions generating concurrently share steps and produce the tokens each makes alone."""
    prompts = [_prompt(n, seed=n) for n in (3, 17, 40, 9, 1)]
    new_tokens = [12, 5, 9, 14, 7]
    expected = _alone(model, prompts, new_tokens)
    eng = Engine(model, num_blocks=2000, block_size=4)
    sessions = [eng.new_session() for _ in prompts]
    results: list[list[int]] = [[] for _ in prompts]
    barrier = threading.Barrier(len(prompts))
    batch_sizes = []

    def worker(i):
        barrier.wait()
        sessions[i].prefill(prompts[i])
        for tok in sessions[i].generate(new_tokens[i]):
            results[i].append(tok)
            batch_sizes.append(eng.telemetry.last.get("sessions", 0))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results == expected
    assert max(batch_sizes) > 1  # steps really were shared


def test_round_robin_generate_matches_reference_continuation(model):
    """Interleaved turns keep the sampled-but-unfed token and continue exactly."""
    eng = Engine(model, num_blocks=1000, block_size=4)
    s = eng.new_session()
    tokens = _prompt(11, seed=1)
    s.prefill(tokens)
    first = list(s.generate(4))
    s.prefill([5, 6, 7])
    second = list(s.generate(3))
    full = tokens + first + [5, 6, 7] + second
    ref = model.forward_reference(torch.tensor([full])).logits[0]
    greedy = ref.argmax(-1).tolist()
    assert first == greedy[10:14]
    assert second == greedy[len(tokens) + 4 + 2 : len(tokens) + 4 + 5]


@pytest.mark.parametrize("cpu_swap_budget", ["1GiB", 0], ids=["swap-to-cpu", "swap-to-disk"])
def test_swap_round_robin_is_exact(model, cpu_swap_budget, tmp_path):
    """A pool that holds two sessions serves five round-robin exactly like an unlimited pool."""
    prompts = [_prompt(20 + 3 * i, seed=10 + i) for i in range(5)]
    big = Engine(model, num_blocks=4000, block_size=4)
    small = Engine(
        model,
        num_blocks=2 * 4 * 12,
        block_size=4,
        cpu_swap_budget=cpu_swap_budget,
        swap_dir=tmp_path,
    )
    runs = {}
    for eng in (big, small):
        sessions = [eng.new_session(seed=i) for i in range(5)]
        outs = [[] for _ in sessions]
        for turn in range(3):
            for i, s in enumerate(sessions):
                if turn == 0:
                    s.prefill(prompts[i])
                else:
                    s.prefill([turn, i + 1])
                outs[i].extend(s.generate(4, temperature=0.8, top_k=20))
        runs[eng] = outs
    assert runs[small] == runs[big]
    counters = small.swap.counters()
    assert counters["swaps_out"] > 0 and counters["swaps_in"] > 0
    if cpu_swap_budget == 0:
        assert counters["spills"] > 0
    assert big.swap.counters()["swaps_out"] == 0


def test_session_that_cannot_fit_gets_budget_error_and_engine_survives(model):
    """A prompt larger than the whole pool fails with the numbers; other sessions keep working."""
    eng = Engine(model, num_blocks=24, block_size=4)  # 4 streams × 6 blocks = 24 tokens max
    ok = eng.new_session("small")
    ok.prefill(_prompt(8, seed=3))
    big = eng.new_session("big")
    with pytest.raises(BudgetError, match=r"needs \d+ KV blocks .* 24 blocks in all"):
        big.prefill(_prompt(200, seed=4))
    assert len(list(ok.generate(3))) == 3
    big.close()
    again = eng.new_session("again")
    again.prefill(_prompt(5, seed=5))
    assert len(list(again.generate(2))) == 2


def test_same_session_from_two_threads_is_refused(model):
    """A session is single-writer: a concurrent second use raises SessionError at once."""
    eng = Engine(model, num_blocks=500, block_size=4)
    s = eng.new_session("shared")
    s.prefill(_prompt(5, seed=6))
    it = s.generate(50)
    next(it)  # the generator holds the session now
    errors = []

    def other():
        try:
            s.prefill([1, 2, 3])
        except SessionError as err:
            errors.append(str(err))

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert errors and "already in use" in errors[0]
    it.close()  # stopping early releases it
    s.prefill([1, 2, 3])


def test_many_threads_on_different_sessions(model):
    """Eight threads, eight sessions, each gets the same tokens as when run alone."""
    prompts = [_prompt(4 + i, seed=20 + i) for i in range(8)]
    expected = _alone(model, prompts, [6] * 8)
    eng = Engine(model, num_blocks=3000, block_size=4)
    results = [None] * 8

    def worker(i):
        s = eng.new_session(f"t{i}")
        s.prefill(prompts[i])
        results[i] = list(s.generate(6))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results == expected


def test_stop_early_and_resume_is_exact(model):
    """Breaking out of generate keeps the session consistent: generating on continues exactly."""
    eng = Engine(model, num_blocks=500, block_size=4)
    a, b = eng.new_session("a"), eng.new_session("b")
    p = _prompt(9, seed=7)
    a.prefill(p)
    b.prefill(p)
    whole = list(a.generate(10))
    part = []
    for tok in b.generate(10):
        part.append(tok)
        if len(part) == 4:
            break
    part += list(b.generate(6))
    assert part == whole


def test_fork_continues_like_parent(model):
    """A fork shares the cache copy-on-write and continues as the parent would."""
    eng = Engine(model, num_blocks=800, block_size=4)
    parent = eng.new_session("p")
    parent.prefill(_prompt(30, seed=8))
    child = parent.fork("c")
    assert list(child.generate(6)) == list(parent.generate(6))


def test_stats_and_telemetry(model):
    """Stats report tokens, slots, bytes and compression; telemetry counts tokens."""
    eng = Engine(model, num_blocks=800, block_size=4)
    s = eng.new_session()
    s.prefill(_prompt(40, seed=9))
    list(s.generate(5))
    st = s.stats()
    assert st["tokens"] == 44 and st["slots"] <= 44 * 4
    assert st["compression_ratio"] >= 1.0
    assert st["prefill_tokens"] == 40 and st["decode_tokens"] == 4 and st["tokens_per_s"] > 0
    total = eng.stats()
    assert total["prefill_tokens"] == 40 and total["decode_tokens"] == 4
    assert 0 < total["pool"]["utilization"] <= 1


def test_text_streaming_stop_strings_and_eos():
    """generate_text streams whole characters; stop strings and the EOS token end generation."""
    from tests.runtime.tokenizer_fixture import byte_tokenizer

    tok = byte_tokenizer()
    m = tiny_model(window=3, offset=5.0)
    m.hf.resize_token_embeddings(len(tok))
    m.tokenizer = tok
    eng = Engine(m, num_blocks=800, block_size=4)
    s = eng.new_session(seed=0)
    s.prefill(tok.encode("héllo wörld"))
    deltas = list(s.generate_text(40, temperature=1.0, seed=0))
    twin = eng.new_session(seed=0)
    twin.prefill(tok.encode("héllo wörld"))
    ids = list(twin.generate(40, temperature=1.0, seed=0))
    assert "".join(deltas) == tok.decode(ids, skip_special_tokens=True)  # nothing lost or split
    # a stop string that the free run produced ends a twin session right there
    text = "".join(deltas)
    if len(text) > 3:
        stop = text[1:3]
        t = eng.new_session(seed=0)
        t.prefill(tok.encode("héllo wörld"))
        short = "".join(t.generate_text(40, temperature=1.0, seed=0, stop_strings=(stop,)))
        assert stop in short and len(short) <= len(text)
    # a stop token id, and the tokenizer's EOS, end generation right after it is sampled
    g = eng.new_session()
    g.prefill(tok.encode("ok"))
    greedy = list(g.generate(6, ignore_eos=True))
    cut = next(i for i in range(1, 6) if greedy[i] not in greedy[:i])
    h = eng.new_session()
    h.prefill(tok.encode("ok"))
    assert list(h.generate(6, stop_token_ids=(greedy[cut],))) == greedy[: cut + 1]
    tok.eos_token = tok.convert_ids_to_tokens(greedy[cut])
    u = eng.new_session()
    u.prefill(tok.encode("ok"))
    assert list(u.generate(6)) == greedy[: cut + 1]


def test_agenerate_yields_the_same_tokens(model):
    """The asyncio interface streams the same tokens as the sync one."""
    import asyncio

    eng = Engine(model, num_blocks=500, block_size=4)
    a, b = eng.new_session("a"), eng.new_session("b")
    p = _prompt(7, seed=12)
    a.prefill(p)
    b.prefill(p)

    async def collect():
        return [t async for t in b.agenerate(6)]

    assert asyncio.run(collect()) == list(a.generate(6))


def test_idle_ttl_and_pinning(model):
    """Idle sessions leave the pool after the TTL unless pinned, and come back exactly on use."""
    eng = Engine(model, num_blocks=500, block_size=4, idle_ttl=0.0)
    pinned, idle, other = (
        eng.new_session("p", pinned=True),
        eng.new_session("i"),
        eng.new_session("o"),
    )
    twin = Engine(model, num_blocks=500, block_size=4).new_session("twin")
    for s in (pinned, idle, other, twin):
        s.prefill(_prompt(12, seed=13))
    eng.expire_idle()
    assert pinned.cache is not None and idle.cache is None and other.cache is None
    assert idle.stats()["resident"] == "cpu"
    assert list(idle.generate(5)) == list(twin.generate(5))
    pinned.unpin()
    eng.expire_idle()
    assert pinned.cache is None


def test_dms_chunked_prefill_sets_the_prefill_chunk(model):
    """A model's dms_chunked_prefill becomes the scheduler's prefill chunk."""
    m = tiny_model(window=3, offset=5.0)
    m.dms = m.dms.replace(chunked_prefill=8)
    eng = Engine(m, num_blocks=500, block_size=4)
    s = eng.new_session()
    s.prefill(_prompt(30, seed=14))
    assert eng.scheduler.config.prefill_chunk == 8
    assert eng.telemetry.steps == 4  # 8 + 8 + 8 + 6
