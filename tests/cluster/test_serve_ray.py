"""`agentrt serve --ray`: the affinity proxy over two replicas that each run the full app, with
the official openai client: the same tokens as one server, sticky response chains, and a chain
that continues on the other replica after its own is killed."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from agentrt.server.service import ResponseStore
from tests.cluster.conftest import catalog_url, unique
from tests.server.helpers import MODEL

ASKS = ["What is the access code?", "Read the file.", "And then?", "Say it again."]


class _Live:
    """uvicorn serving `app` on a free loopback port in a thread until `stop()`."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "app did not start"
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.server.servers[0].sockets[0].getsockname()[1]}"

    def client(self) -> Any:
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key="k", max_retries=0, timeout=120)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


@pytest.fixture(scope="module")
def servers(ray_cluster, cluster_model, tmp_path_factory):
    """(proxy over 2 replicas, one plain server) on the same tiny model."""
    from agentrt import Engine
    from agentrt.cluster import ClusterConfig, ReplicaConfig
    from agentrt.cluster.serve_proxy import proxy_on_ray
    from agentrt.server import create_app

    home = tmp_path_factory.mktemp("serve-ray")
    config = ClusterConfig(
        ReplicaConfig(
            model=str(cluster_model), db=catalog_url(home), home=str(home), kv_budget="64MiB"
        ),
        replicas=2,
        name_prefix="app",
    )
    proxy = _Live(proxy_on_ray(config, {"model_name": MODEL, "api_key": "k"}, timeout=120))
    alone_home = tmp_path_factory.mktemp("serve-one")
    engine = Engine.from_pretrained(
        str(cluster_model), device="cpu", kv_budget="64MiB", home=alone_home,
        db=f"sqlite:///{alone_home / 'a.db'}",
    )  # fmt: skip
    alone = _Live(create_app(engine, model_name=MODEL, api_key="k"))
    yield proxy, alone
    proxy.stop()
    alone.stop()


def _chat(client: Any, text: str, stream: bool) -> str:
    out = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": text}],
        max_tokens=6,
        temperature=0,
        stream=stream,
    )
    if not stream:
        return out.choices[0].message.content
    return "".join(c.choices[0].delta.content or "" for c in out if c.choices)


def test_chat_through_the_proxy_equals_one_server(servers):
    proxy, alone = servers
    for text in ASKS[:3]:
        want = _chat(alone.client(), text, False)
        assert _chat(proxy.client(), text, False) == want
        assert _chat(proxy.client(), text, True) == want
    raw = proxy.client().models.with_raw_response.list()
    assert raw.headers["x-agentrt-replica"] in ("app-0", "app-1")
    assert [m.id for m in raw.parse().data] == [MODEL]


def _turn(client: Any, text: str, prev: str | None) -> tuple[Any, str | None]:
    raw = client.responses.with_raw_response.create(
        model=MODEL, input=text, previous_response_id=prev, max_output_tokens=6, temperature=0
    )
    return raw.parse(), raw.headers.get("x-agentrt-replica")


def test_a_conversation_stays_on_the_replica_that_holds_it(servers):
    proxy, _ = servers
    conv = unique("conv")
    where, cached = [], []
    for text in ASKS[:2]:
        raw = proxy.client().responses.with_raw_response.create(
            model=MODEL, input=text, conversation=conv, max_output_tokens=4, temperature=0
        )
        where.append(raw.headers["x-agentrt-replica"])
        cached.append(raw.parse().usage.input_tokens_details.cached_tokens)
    assert where[0] == where[1] and cached[0] == 0 < cached[1]


def test_response_chain_sticks_then_continues_after_its_replica_is_killed(servers, ray_cluster):
    proxy, alone = servers
    want, prev = [], None
    for text in ASKS:
        r, _ = _turn(alone.client(), text, prev)
        want.append(r)
        prev = r.id
    got, where, prev = [], [], None
    for text in ASKS[:3]:
        r, replica = _turn(proxy.client(), text, prev)
        got.append(r)
        where.append(replica)
        prev = r.id
    assert where[0] in ("app-0", "app-1") and where == [where[0]] * 3
    import httpx

    session = got[0].model_extra["session"]
    one = httpx.get(f"{proxy.url}/v1/sessions/{session}", headers={"Authorization": "Bearer k"})
    assert one.status_code == 200 and one.headers["x-agentrt-replica"] == where[0]
    listed = httpx.get(f"{proxy.url}/v1/sessions", headers={"Authorization": "Bearer k"}).json()
    assert {"id": session, "replica": where[0]}.items() <= next(
        row for row in listed["data"] if row["id"] == session
    ).items()
    ray_cluster.kill(ray_cluster.get_actor(where[0]), no_restart=True)
    r, replica = _turn(proxy.client(), ASKS[3], prev)
    got.append(r)
    assert replica not in (None, where[0])
    assert [g.output_text for g in got] == [w.output_text for w in want]
    cached = [g.usage.input_tokens_details.cached_tokens for g in got]
    assert cached == [w.usage.input_tokens_details.cached_tokens for w in want]
    for i in (1, 2, 3):  # no re-prefill, not even on the replica that reopened the session
        before = got[i - 1].usage
        assert cached[i] >= before.input_tokens + before.output_tokens - 1
        assert cached[i] < got[i].usage.input_tokens


def test_unreachable_replicas_give_a_retryable_503():
    from fastapi.testclient import TestClient

    from agentrt.cluster.serve_proxy import Backend, Pool, create_proxy

    pool = Pool([Backend("gone", "http://127.0.0.1:9")])
    with TestClient(create_proxy(pool, timeout=5)) as client:
        resp = client.post("/v1/responses", json={"model": MODEL, "input": "hi"})
    assert resp.status_code == 503
    assert resp.headers["retry-after"].isdigit()
    assert resp.json()["error"]["code"] == "replica_unavailable"
    assert not pool.backends["gone"].alive


def test_response_store_is_shared_by_servers_on_one_home(tmp_path):
    a, b = ResponseStore(tmp_path / "responses.json"), ResponseStore(tmp_path / "responses.json")
    a.put("responses", "r1", {"session": "s", "position": 3, "messages": []})
    assert b.get("responses", "r1")["position"] == 3
    b.put("responses", "r2", {"session": "s", "position": 5, "messages": []})
    assert set(a.data["responses"]) == {"r1", "r2"}


def test_chat_affinity_follows_the_first_messages_and_spills_on_load():
    from agentrt.cluster.serve_proxy import SPILL, Backend, Pool

    pool = Pool([Backend(f"r{i}", f"http://x{i}") for i in range(3)])
    keys = [f"conversation {i}".encode() for i in range(12)]
    first = {k: pool.affine(k)[0].name for k in keys}
    assert len(set(first.values())) > 1  # conversations spread over the replicas
    assert all(pool.affine(k)[0].name == first[k] for k in keys)  # and each one sticks
    k = keys[0]
    pool.backends[first[k]].inflight = SPILL
    assert pool.affine(k)[0].name != first[k]  # too busy: the least loaded one takes it
    pool.backends[first[k]].inflight = SPILL - 1
    assert pool.affine(k)[0].name == first[k]
