"""The cluster's parts that need no Ray: config checks, the fsspec blob mirror, a Replica
driving a real Engine in-process, and the sharding of a task's inputs."""

from __future__ import annotations

import pytest

from agentrt.errors import CheckpointError, ConfigError


def test_config_refuses_bad_values():
    from agentrt.cluster import ClusterConfig, ReplicaConfig

    rc = ReplicaConfig(model="m", db="sqlite:///x.db", home="/tmp/h")
    with pytest.raises(ConfigError, match="replicas"):
        ClusterConfig(rc, replicas=0)
    with pytest.raises(ConfigError, match="save_every_turns"):
        ReplicaConfig(model="m", db="sqlite:///x.db", home="/h", save_every_turns=-1)
    with pytest.raises(ConfigError, match="in-memory"):
        ReplicaConfig(model="m", db="sqlite:///:memory:", home="/h")
    assert ClusterConfig(rc, replicas=3).replica_names() == ["replica-0", "replica-1", "replica-2"]


def test_blob_mirror_push_pull_roundtrip(tmp_path):
    from agentrt.cluster.blobs import BlobMirror

    a, b = tmp_path / "a", tmp_path / "b"
    rel = "checkpoints/s1/0001-5.safetensors"
    (a / rel).parent.mkdir(parents=True)
    (a / rel).write_bytes(b"blob-bytes")
    url = f"file://{tmp_path / 'store'}"
    BlobMirror(url, a).push(rel)
    assert (tmp_path / "store" / rel).read_bytes() == b"blob-bytes"
    assert not list((tmp_path / "store").rglob("*.part"))
    assert BlobMirror(url, b).pull(rel).read_bytes() == b"blob-bytes"
    with pytest.raises(CheckpointError, match="neither on this replica nor in the shared store"):
        BlobMirror(url, b).pull("checkpoints/s2/none.safetensors")


def test_blob_mirror_unknown_protocol_is_a_config_error(tmp_path):
    from agentrt.cluster.blobs import BlobMirror

    with pytest.raises(ConfigError, match="cannot open the checkpoint store"):
        BlobMirror("nosuchproto://bucket/x", tmp_path)


def test_replica_in_process_saves_each_turn_and_reopens(tmp_path):
    """Replica A saves every turn to the store; replica B (another home) opens it and both
    continue with the same tokens."""
    from agentrt.cluster import Replica, ReplicaConfig
    from tests.agent.helpers import save_chat_model

    model = save_chat_model(tmp_path / "m", "smollm2")
    config = ReplicaConfig(
        model=str(model), db=f"sqlite:///{tmp_path / 'c.db'}", home=str(tmp_path / "h"),
        num_blocks=500, block_size=8, store=f"file://{tmp_path / 'store'}",
    )  # fmt: skip
    a, b = Replica("a", config), Replica("b", config)
    try:
        a.create("s")
        first = a.turn("s", [5, 6, 7, 8], {"max_new_tokens": 4, "ignore_eos": True})
        assert first.saved_tokens == first.position > 4
        info = a.info()
        assert info.sessions["s"] > 0 and info.free_bytes < info.total_bytes
        assert a.release("s") == first.position and "s" not in a.info().sessions
        assert b.open("s") == first.position
        assert (tmp_path / "h" / "replicas" / "b" / "checkpoints").is_dir()
        again = b.turn("s", [9, 10], {"max_new_tokens": 4, "ignore_eos": True})
        assert len(again.tokens) == 4 and again.position == first.position + 2 + 4
    finally:
        a.shutdown()
        b.shutdown()


def test_shards_round_robin_and_merge_in_input_order(tmp_path):
    from agentrt.agent.task import load_task
    from agentrt.cluster.batch import ShardResult, check_spreadable, merge, shards

    task = tmp_path / "t.yaml"
    ids = [f"i{k}" for k in range(5)]
    task.write_text(
        "inputs:\n" + "".join(f"  - {{id: {i}, prompt: p}}\n" for i in ids)
        + "session: {name: t, mode: per_input}\noutput: o.jsonl\n"
    )  # fmt: skip
    spec = load_task(task, check_model=False)
    parts = shards(spec, 2)
    assert [[i.id for i in p.inputs] for p in parts] == [["i0", "i2", "i4"], ["i1", "i3"]]
    assert len(shards(spec, 9)) == 5
    results = [ShardResult("r", [{"id": i.id} for i in p.inputs], [], [], False) for p in parts]
    assert merge(spec, results) == 5
    assert [line.split('"')[3] for line in spec.output.read_text().splitlines()] == ids
    check_spreadable(spec, resume=False)
    with pytest.raises(ConfigError, match="--resume"):
        check_spreadable(spec, resume=True)


def test_capacity_reads_the_engines_byte_accounting():
    from agentrt.cluster.capacity import GIB, LLAMA_1B, LLAMA_8B, estimate, session_bytes

    # dense 1B at 32k: 16 layers x 8 heads streams of 32768 slots, K+V bf16 (2 x 64 x 2 B)
    # plus 8 B of slot metadata each
    assert session_bytes(LLAMA_1B, 32768, 1.0) == 16 * 8 * 32768 * (2 * 64 * 2 + 8)
    assert session_bytes(LLAMA_1B, 32768, 8.0) == 16 * 8 * 4096 * (2 * 64 * 2 + 8)
    # short sessions never drop below the window ring (w + 1 = 513 slots, rounded to blocks)
    assert session_bytes(LLAMA_8B, 1000, 8.0) == 32 * 8 * 528 * (2 * 128 * 2 + 8)
    big = estimate(LLAMA_8B, 32768, 8.0, gpu_bytes=80 * GIB)
    assert (
        big.sessions
        == big.kv_budget // big.session_bytes
        > 8 * estimate(LLAMA_8B, 32768, 1.0).sessions - 8
    )
