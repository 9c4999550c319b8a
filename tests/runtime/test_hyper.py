"""Hyper-scaling: N chains from one prefill, shared prefix blocks, exact chains, seeded votes."""

from __future__ import annotations

import math

import pytest
import torch

from agentrt import Engine
from agentrt.engine.hyper import max_chains
from agentrt.engine.vote import VoteSpec, extract_answer, pick, tally
from agentrt.errors import ConfigError, SessionError
from tests.dms.serving_helpers import tiny_model

FIRST_ID = r"^(\d+)"  # the tiny model has no tokenizer: a chain's text is its token ids


def _prompt(n: int, seed: int) -> list[int]:
    return torch.randint(0, 97, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.fixture(scope="module")
def model():
    return tiny_model(window=3, offset=5.0)


def _engine(model, blocks: int = 3000) -> Engine:
    return Engine(model, num_blocks=blocks, block_size=4)


def test_the_prompt_is_prefilled_once_for_all_chains(model):
    eng = _engine(model)
    s = eng.new_session()
    prompt = _prompt(40, seed=1)
    s.prefill(prompt)
    res = s.sample_parallel(4, 10, temperature=1.0, seed=3, keep="all")
    assert eng.stats()["prefill_tokens"] == len(prompt)  # the prompt only, once
    assert res.prefill_tokens == 0 and res.prompt_tokens == len(prompt)
    for chain in res.chains:
        c = chain.session.counters
        assert c["prefill_tokens"] == 0
        assert c["decode_tokens"] == len(chain.token_ids) - 1  # the last one is sampled, unfed
    assert eng.telemetry.last["sessions"] >= 1
    assert max(len(ch.token_ids) for ch in res.chains) == 10


def test_chains_decode_in_one_batch(model):
    eng = _engine(model)
    s = eng.new_session()
    s.prefill(_prompt(20, seed=2))
    steps_before = eng.telemetry.steps
    res = s.sample_parallel(4, 8, temperature=1.0, seed=5, ignore_eos=True)
    assert all(len(c.token_ids) == 8 for c in res.chains)
    # 4 chains × 7 fed tokens in 7 shared steps, not 28
    assert eng.telemetry.steps - steps_before == 7
    assert eng.telemetry.decode_tokens == 4 * 7


def test_the_shared_prefix_blocks_are_stored_once(model):
    eng = _engine(model)
    s = eng.new_session()
    s.prefill(_prompt(120, seed=4))
    parent_blocks = eng.pool.num_used
    assert parent_blocks == s.stats()["blocks"]
    n, new = 4, 6
    res = s.sample_parallel(n, new, temperature=1.0, seed=1, keep="all", ignore_eos=True)
    streams = model.arch.num_layers * model.arch.num_kv_heads
    added = eng.pool.num_used - parent_blocks
    assert added * eng.pool.bytes_per_block == res.pool_bytes_added
    # each chain copies at most its last partial block per stream and grows by `new` slots
    per_chain = streams * (eng.pool.spec.blocks_for_slots(new) + 1)
    assert added <= n * per_chain < n * parent_blocks
    assert eng.pool.stats()["num_shared"] > 0
    assert res.prefix_bytes == parent_blocks * eng.pool.bytes_per_block
    for chain in res.chains:  # each chain references the prefix, but owns only its tail
        assert chain.kv_bytes > chain.kv_bytes_own
        assert chain.kv_bytes_own <= per_chain * eng.pool.bytes_per_block
    for chain in res.chains:
        chain.session.close()
    assert eng.pool.num_used == parent_blocks


def test_each_chain_equals_an_unforked_run_with_its_seed(model):
    prompt = _prompt(33, seed=6)
    eng = _engine(model)
    s = eng.new_session()
    s.prefill(prompt)
    res = s.sample_parallel(4, 12, temperature=1.0, top_p=0.9, seed=11, keep="none")
    assert [c.seed for c in res.chains] == [11, 12, 13, 14]
    assert len({tuple(c.token_ids) for c in res.chains}) > 1  # different seeds, different chains
    for chain in res.chains:
        ref = _engine(model)
        alone = ref.new_session()
        alone.prefill(prompt)
        tokens = list(alone.generate(12, temperature=1.0, top_p=0.9, seed=chain.seed))
        assert chain.token_ids == tokens, f"chain {chain.index}"
        ref.close()


def test_the_vote_is_deterministic_under_a_seed(model):
    prompt = _prompt(25, seed=7)

    def once():
        eng = _engine(model)
        s = eng.new_session()
        s.prefill(prompt)
        r = s.sample_parallel(6, 6, temperature=1.5, seed=21, answer_pattern=FIRST_ID)
        return r, s, eng

    a, sa, _ = once()
    b, sb, _ = once()
    assert [c.answer for c in a.chains] == [c.answer for c in b.chains]
    assert a.winner == b.winner and a.answer == b.answer and a.votes == b.votes
    assert a.votes == tally([c.answer for c in a.chains])
    assert a.winner == pick([c.answer for c in a.chains], [6] * 6, "majority")
    # the session continues as the winning chain, without re-feeding it
    win = a.chains[a.winner].token_ids
    assert sa.tokens == prompt + win[:-1] and sa.pending_token == win[-1]
    assert sa.tokens == sb.tokens


def test_the_winner_continues_exactly_and_the_losers_are_freed(model):
    prompt = _prompt(30, seed=8)
    eng = _engine(model)
    s = eng.new_session()
    s.prefill(prompt)
    res = s.sample_parallel(3, 5, temperature=1.0, seed=2, answer_pattern=FIRST_ID)
    assert len(eng.sessions) == 1  # the losers are closed
    assert eng.pool.num_used == s.stats()["blocks"]
    more = list(s.generate(4))
    win = res.chains[res.winner].token_ids
    ref = _engine(model).new_session()
    ref.prefill(prompt)
    assert list(ref.generate(5, temperature=1.0, seed=win and res.chains[res.winner].seed)) == win
    assert list(ref.generate(4)) == more


def test_a_pending_token_is_fed_once_before_forking(model):
    eng = _engine(model)
    s = eng.new_session()
    s.prefill(_prompt(10, seed=9))
    list(s.generate(3))  # leaves a sampled, unfed token
    assert s.pending_token is not None
    before = eng.stats()["prefill_tokens"]
    res = s.sample_parallel(3, 4, temperature=1.0, seed=1, keep="all")
    assert eng.stats()["prefill_tokens"] == before + 1
    assert all(c.session.counters["prefill_tokens"] == 0 for c in res.chains)


def test_auto_n_fits_the_free_pool_and_says_so(model):
    eng = _engine(model, blocks=600)
    s = eng.new_session()
    s.prefill(_prompt(50, seed=10))
    n, note = max_chains(s, 40)
    streams = model.arch.num_layers * model.arch.num_kv_heads
    ratio = max(1.0, s.stats()["compression_ratio"])
    assert ratio > 1.5  # window 3: the compressed chains are estimated as such
    per_chain = streams * (eng.pool.spec.blocks_for_slots(math.ceil(40 / ratio)) + 1)
    assert n == min(16, eng.pool.num_free // per_chain) and n > 1
    assert f"{n} chains fit" in note
    res = s.sample_parallel("auto", 40, temperature=1.0, seed=0, keep="none")
    assert len(res.chains) == n and res.n_note == note
    small = _engine(model, blocks=80)
    t = small.new_session()
    t.prefill(_prompt(50, seed=10))
    assert max_chains(t, 40)[0] < n


def test_bad_calls_are_refused(model):
    eng = _engine(model)
    s = eng.new_session()
    with pytest.raises(SessionError, match="prefill a prompt first"):
        s.sample_parallel(2, 4, temperature=1.0)
    s.prefill([1, 2, 3])
    with pytest.raises(ConfigError, match="vote="):
        s.sample_parallel(2, 4, temperature=1.0, vote="best")
    with pytest.raises(ConfigError, match="not a valid regex"):
        s.sample_parallel(2, 4, temperature=1.0, answer_pattern="(")
    with pytest.raises(ConfigError, match="n=0"):
        s.sample_parallel(0, 4, temperature=1.0)
    with pytest.raises(ConfigError, match="keep="):
        s.sample_parallel(2, 4, temperature=1.0, keep="some")
    assert len(eng.sessions) == 1 and s.tokens == [1, 2, 3]


def test_extract_answer_takes_the_last_match_and_its_group():
    text = "First 3 + 4 = 7. Check: the answer is 7. Final answer: 12."
    assert extract_answer(text, r"answer(?: is|:) (-?\d+)") == "12"
    assert extract_answer(text, r"\d+") == "12"
    assert extract_answer("no number", r"(\d+)") is None
    assert extract_answer("  a   b \n", None) == "a b"
    assert extract_answer("   ", None) is None


def test_pick_breaks_ties_by_the_lowest_chain():
    answers = ["5", "7", "7", "5", None, "9"]
    assert pick(answers, [3] * 6, "majority") == 0  # 5 and 7 tie; 5 came first
    assert pick(["5", "7", "7"], [3, 3, 3], "majority") == 1
    assert pick(answers, [9, 4, 2, 8, 1, 2], "first") == 2  # chain 4 has no answer
    assert pick(answers, [3] * 6, "all") == 0
    assert pick([None, None], [1, 2], "majority") == 0
    assert tally(answers) == {"5": 2, "7": 2, "9": 1}
    with pytest.raises(ConfigError):
        VoteSpec(vote="best")
