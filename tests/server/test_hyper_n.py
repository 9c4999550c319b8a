"""`n` choices on chat completions: one prefill, copy-on-write forks decoding in one batch."""

from __future__ import annotations

import pytest

from tests.server.helpers import MODEL, LiveServer, make_engine

pytestmark = pytest.mark.slow
ASK = [{"role": "user", "content": "Count the crates in bay four, then add two."}]


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    server = LiveServer(make_engine(tmp_path_factory.mktemp("home")))
    yield server
    server.stop()


def test_n_choices_prefill_the_prompt_once_and_decode_together(live):
    client = live.client()
    tel = live.engine.telemetry
    prefill0, steps0, decode0 = tel.prefill_tokens, tel.steps, tel.decode_tokens
    many = client.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=8, temperature=1.0, seed=7, n=4
    )
    assert len(many.choices) == 4 and [c.index for c in many.choices] == [0, 1, 2, 3]
    assert tel.prefill_tokens - prefill0 == many.usage.prompt_tokens  # once, not 4 times
    assert many.usage.completion_tokens == tel.decode_tokens - decode0 + 4  # last ones unfed
    assert tel.steps - steps0 < (tel.decode_tokens - decode0)  # the chains shared steps
    # choice i samples with seed + i: it equals a single-choice request with that seed
    for i, choice in enumerate(many.choices):
        one = client.chat.completions.create(
            model=MODEL, messages=ASK, max_tokens=8, temperature=1.0, seed=7 + i
        )
        assert one.choices[0].message.content == choice.message.content, f"choice {i}"
    assert len({c.message.content for c in many.choices}) > 1


def test_n_choices_stream_interleaved_and_match_the_non_stream_reply(live):
    client = live.client()
    body = dict(model=MODEL, messages=ASK, max_tokens=8, temperature=1.0, seed=11, n=3)
    whole = client.chat.completions.create(**body)
    chunks = list(
        client.chat.completions.create(**body, stream=True, stream_options={"include_usage": True})
    )
    texts = ["", "", ""]
    finished = set()
    for c in chunks:
        for ch in c.choices:
            texts[ch.index] += ch.delta.content or ""
            if ch.finish_reason is not None:
                finished.add(ch.index)
    assert finished == {0, 1, 2}
    assert texts == [c.message.content for c in whole.choices]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    # nothing leaks: every admission reservation is given back
    assert live.app.state.service._reserved == 0
