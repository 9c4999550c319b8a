"""16 clients on 4 sessions' worth of KV budget; disconnects leak nothing; 429 when it never fits."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from agentrt.agent.chat import ChatFormat
from tests.server.helpers import MODEL, LiveServer, make_engine

pytestmark = pytest.mark.slow
PROMPTS = [[{"role": "user", "content": f"Question {i}: what is the code?"}] for i in range(16)]
MAX_TOKENS = 6


def _ask(client, messages, max_tokens=MAX_TOKENS):
    r = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=max_tokens, temperature=0
    )
    return r.choices[0].message.content


def _settled(engine, free, sessions, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if engine.pool.num_free == free and len(engine.sessions) == sessions:
            return True
        time.sleep(0.05)
    return False


def test_sixteen_clients_on_four_sessions_of_budget(tmp_path):
    alone = LiveServer(make_engine(tmp_path / "a"))
    try:
        expected = [_ask(alone.client(), p) for p in PROMPTS]
        fmt = ChatFormat(alone.engine.tokenizer)
        longest = max(len(fmt.prompt(p, add_generation_prompt=True).ids) for p in PROMPTS)
        per_request = alone.app.state.service.blocks_for(longest + 64)
    finally:
        alone.stop()
    server = LiveServer(make_engine(tmp_path / "b", num_blocks=4 * per_request))
    try:
        client = server.client()
        with ThreadPoolExecutor(16) as pool:
            got = list(pool.map(lambda p: _ask(client, p), PROMPTS))
        assert got == expected
        # disconnects mid-stream: the pool's blocks and the sessions come back to where they were
        _ask(client, PROMPTS[0], max_tokens=64)
        engine = server.engine
        assert _settled(engine, engine.pool.num_free, len(engine.sessions), timeout=1)
        free, sessions = engine.pool.num_free, len(engine.sessions)
        body = {"model": MODEL, "messages": PROMPTS[0], "max_tokens": 200, "temperature": 0}
        body["stream"] = True
        decoded = engine.telemetry.decode_tokens
        for _ in range(3):
            with httpx.stream(
                "POST", f"{server.url}/v1/chat/completions", json=body, timeout=30
            ) as r:
                lines = r.iter_lines()
                for _ in range(3):
                    next(lines)
        assert engine.telemetry.decode_tokens - decoded < 3 * 199  # the streams were cut short
        assert _settled(engine, free, sessions), (
            engine.pool.num_free,
            free,
            len(engine.sessions),
            sessions,
        )
        assert server.app.state.service._reserved == 0
        # a request that can never fit the pool: 429 with Retry-After, not a crash
        r = httpx.post(
            f"{server.url}/v1/chat/completions",
            json={"model": MODEL, "messages": PROMPTS[0], "max_tokens": 4000},
            timeout=30,
        )
        assert r.status_code == 429 and r.headers["retry-after"]
        assert r.json()["error"]["code"] == "kv_budget_exhausted"
        assert _ask(client, PROMPTS[1]) == expected[1]
    finally:
        server.stop()


def test_bench_server_measures_both_modes(tmp_path):
    from agentrt.bench.server_bench import format_table, run_server_bench

    homes = iter([tmp_path / "s", tmp_path / "r"])
    result = run_server_bench(lambda: make_engine(next(homes)), turns=4, max_tokens=3)
    sessions, resend = result["sessions"], result["resend"]
    assert len(sessions["turns"]) == len(resend["turns"]) == 4
    # sessions prefill only each new turn; re-sending prefills the whole growing history
    assert sessions["prefilled_tokens"] < resend["prefilled_tokens"]
    assert resend["turns"][-1]["prefilled"] == resend["turns"][-1]["input"]
    assert "resend / sessions" in format_table(result)
