"""`agentrt serve` with the official openai client on a live server: chat, responses, sessions."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from agentrt.server.routes_chat import assistant_message
from tests.server.helpers import MODEL, LiveServer, make_engine

pytestmark = pytest.mark.slow
ASK = [{"role": "user", "content": "What is the access code?"}]


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    server = LiveServer(make_engine(home))
    yield server
    server.stop()


def _chat(client, messages, **kw):
    return client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=6, temperature=0, **kw
    )


def test_chat_non_stream_and_stream_agree_and_reuse_the_prefix(live):
    client = live.client()
    first = _chat(client, ASK)
    again = _chat(client, ASK)
    assert first.choices[0].message.content == again.choices[0].message.content
    assert first.usage.completion_tokens == 6 and first.choices[0].finish_reason == "length"
    assert again.usage.prompt_tokens_details.cached_tokens == again.usage.prompt_tokens
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=ASK,
            max_tokens=6,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == first.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == 6
    # a follow-up re-sends the history: everything the server held is reused
    follow = ASK + [
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "Read the file."},
    ]
    nxt = _chat(client, follow)
    assert nxt.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens
    assert nxt.usage.prompt_tokens_details.cached_tokens < nxt.usage.prompt_tokens


def test_n_choices_seeded_sampling_replays(live):
    client = live.client()
    a = client.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=5, temperature=1.0, seed=7, n=2
    )
    b = client.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=5, temperature=1.0, seed=7, n=2
    )
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert len(a.choices) == 2


def test_tool_calls_parse_into_openai_format_and_round_trip(live):
    text = '<tool_call>[{"name": "get_weather", "arguments": {"city": "Paris"}}]</tool_call>'
    message, has_calls = assistant_message(text, True)
    assert has_calls and message["content"] is None
    call = message["tool_calls"][0]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    history = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "Sunny, 21 C"},
    ]
    client = live.client()
    out = _chat(client, history, tools=tools)
    assert out.choices[0].finish_reason in ("stop", "length", "tool_calls")
    again = _chat(client, history, tools=tools)  # the same rendering: fully cached
    assert again.usage.prompt_tokens_details.cached_tokens == again.usage.prompt_tokens
    forced = _chat(
        client,
        ASK,
        tools=tools,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    assert forced.choices[0].finish_reason in ("stop", "length", "tool_calls")


def _session(server, name):
    return httpx.get(f"{server.url}/v1/sessions/{name}", timeout=30).json()


def _chain(servers, turns, restart_at=None):
    """Run a response chain; returns texts; checks each turn prefills exactly the new tokens."""
    server = servers[0]()
    client = server.client()
    texts, prev, prev_id, name = [], None, None, None
    for turn in range(turns):
        if turn == restart_at:
            server.stop()
            server = servers[1]()
            client = server.client()
        before = _session(server, name)["prefill_tokens"] if name else 0
        r = client.responses.create(
            model=MODEL,
            input=f"Turn {turn}: what is the code?",
            max_output_tokens=5,
            temperature=0,
            previous_response_id=prev_id,
        )
        name = r.model_extra["session"]
        stats = _session(server, name)
        u = r.usage
        if prev is not None:
            # everything held is reused: the last turn's input and output (its last token was sampled, not fed)
            assert (
                u.input_tokens_details.cached_tokens == prev.input_tokens + prev.output_tokens - 1
            )
            assert 0 < u.input_tokens - u.input_tokens_details.cached_tokens < 60
        assert stats["prefill_tokens"] - (before if turn != restart_at else 0) == (
            u.input_tokens - u.input_tokens_details.cached_tokens
        )
        texts.append(r.output_text)
        prev, prev_id = u, r.id
    server.stop()
    return texts, prev_id, name


def test_responses_chain_prefills_only_new_tokens_and_survives_a_restart(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    plain, _, _ = _chain([lambda: LiveServer(make_engine(a))], 10)
    restarted, last_id, name = _chain(
        [lambda: LiveServer(make_engine(b)), lambda: LiveServer(make_engine(b))], 10, restart_at=5
    )
    assert restarted == plain
    # branching from an earlier response forks its point (copy-on-write): nothing recomputed
    server = LiveServer(make_engine(b))
    try:
        client = server.client()
        r1 = client.responses.create(model=MODEL, input="Hi", max_output_tokens=4, temperature=0)
        r2 = client.responses.create(
            model=MODEL,
            input="Next",
            max_output_tokens=4,
            temperature=0,
            previous_response_id=r1.id,
        )
        r3 = client.responses.create(
            model=MODEL,
            input="Other",
            max_output_tokens=4,
            temperature=0,
            previous_response_id=r1.id,
        )
        assert (
            r3.usage.input_tokens_details.cached_tokens
            == r2.usage.input_tokens_details.cached_tokens
        )
        r4 = client.responses.create(
            model=MODEL,
            input="And?",
            max_output_tokens=4,
            temperature=0,
            previous_response_id=r3.id,
        )
        assert r4.model_extra["session"] == r3.model_extra["session"] != r1.model_extra["session"]
        u3 = r3.usage
        assert r4.usage.input_tokens_details.cached_tokens == u3.input_tokens + u3.output_tokens - 1
        # a named conversation is a named session, continued turn after turn
        c1 = client.responses.create(
            model=MODEL, input="Hi", max_output_tokens=4, conversation="notes"
        )
        c2 = client.responses.create(
            model=MODEL, input="Again", max_output_tokens=4, conversation="notes"
        )
        assert c1.model_extra["session"] == c2.model_extra["session"] == "notes"
        assert c2.usage.input_tokens_details.cached_tokens == (
            c1.usage.input_tokens + c1.usage.output_tokens - 1
        )
        more = client.responses.create(
            model=MODEL,
            input="Go on",
            max_output_tokens=4,
            temperature=0,
            previous_response_id=last_id,
        )
        assert more.model_extra["session"] == name
    finally:
        server.stop()


def _post(server, path, body, **kw):
    return httpx.post(f"{server.url}{path}", content=body, timeout=30, **kw)


def test_bad_input_gets_openai_errors(live):
    cases = [
        (b"{not json", 400, "invalid_json"),
        (json.dumps({"model": MODEL, "messages": ASK, "bogus": 1}).encode(), 400, "unknown_field"),
        (json.dumps({"model": MODEL, "messages": "hi"}).encode(), 400, "invalid_value"),
        (json.dumps({"model": MODEL, "messages": ASK, "max_tokens": 10**9}).encode(), 400, None),
        (
            json.dumps({"model": MODEL, "messages": ASK, "temperature": "hot"}).encode(),
            400,
            "invalid_value",
        ),
        (b"[1, 2]", 400, "invalid_json"),
    ]
    for body, status, code in cases:
        r = _post(live, "/v1/chat/completions", body, headers={"content-type": "application/json"})
        assert r.status_code == status, (body, r.text)
        err = r.json()["error"]
        assert err["message"] and err["type"] == "invalid_request_error"
        if code:
            assert err["code"] == code
    huge = json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "x" * (5 * 2**20)}]}
    )
    r = _post(live, "/v1/chat/completions", huge.encode())
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    r = _post(
        live,
        "/v1/responses",
        json.dumps({"model": MODEL, "input": "x", "previous_response_id": "resp_nope"}).encode(),
    )
    assert r.status_code == 404 and r.json()["error"]["code"] == "response_not_found"
    for method in ("get", "delete"):
        r = httpx.request(method, f"{live.url}/v1/sessions/nope", timeout=30)
        assert r.status_code == 404 and "error" in r.json()
    r = httpx.get(f"{live.url}/v1/nothing", timeout=30)
    assert r.status_code == 404 and "Traceback" not in r.text


def test_models_and_sessions_routes(live):
    assert [m.id for m in live.client().models.list()] == [MODEL]
    rows = httpx.get(f"{live.url}/v1/sessions", timeout=30).json()["data"]
    assert rows and {"id", "tokens", "kv_bytes", "compression_ratio", "state"} <= set(rows[0])
    sid = rows[0]["id"]
    fork = httpx.post(
        f"{live.url}/v1/sessions/{sid}/fork", json={"name": "copy-1"}, timeout=30
    ).json()
    assert fork["id"] == "copy-1" and fork["tokens"] == rows[0]["tokens"]
    saved = httpx.post(f"{live.url}/v1/sessions/copy-1/save", timeout=30).json()
    assert saved["saved"] is True
    assert httpx.delete(f"{live.url}/v1/sessions/copy-1", timeout=30).json()["deleted"] is True


def test_api_key_guards_every_route(tmp_path, caplog):
    caplog.set_level("DEBUG")
    server = LiveServer(make_engine(tmp_path), api_key="s3cret")
    try:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            r = httpx.get(f"{server.url}/v1/models", headers=headers, timeout=30)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
            r = httpx.get(f"{server.url}/v1/sessions", headers=headers, timeout=30)
            assert r.status_code == 401
        assert [m.id for m in server.client(api_key="s3cret").models.list()] == [MODEL]
    finally:
        server.stop()
    assert "s3cret" not in caplog.text and "Bearer wrong" not in caplog.text


def test_request_timeout_is_504_and_frees_its_reservation(tmp_path):
    server = LiveServer(make_engine(tmp_path), request_timeout=0.001)
    try:
        body = {"model": MODEL, "messages": ASK, "max_tokens": 50, "temperature": 0}
        r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=30)
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        service = server.app.state.service
        deadline = time.monotonic() + 10
        while service._reserved and time.monotonic() < deadline:
            time.sleep(0.05)
        assert service._reserved == 0
    finally:
        server.stop()
