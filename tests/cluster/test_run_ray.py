"""`agentrt run TASK.yaml --ray`: 20 independent inputs over two replicas give the same JSONL
as the same run without Ray (timings aside)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from agentrt.cli import cli


def _task(folder: Path, model: Path, n: int = 20) -> Path:
    inputs = "".join(
        f"  - {{id: q{i:02d}, prompt: 'Question number {i}: what is {i} + {i}?'}}\n"
        for i in range(n)
    )
    task = folder / "many.yaml"
    task.write_text(
        f"model: {model}\ndevice: cpu\nkv_budget: 64MiB\ninputs:\n{inputs}"
        "generation: {max_new_tokens: 8}\nlimits: {max_steps: 1}\n"
        "session: {name: many, mode: per_input}\noutput: out.jsonl\n"
    )  # fmt: skip
    return task


def _records(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        rec.pop("timings")
        for call in rec["tool_calls"]:
            call.pop("seconds")
        out.append(rec)
    return out


def test_run_with_ray_writes_the_same_jsonl(ray_cluster, cluster_model, tmp_path, monkeypatch):
    task = _task(tmp_path, cluster_model)
    runner = CliRunner()
    plain = runner.invoke(cli, ["run", str(task), "--set", f"output={tmp_path / 'plain.jsonl'}"])
    assert plain.exit_code == 0, plain.output
    # a second catalog, so session names are not taken by the first run
    home = tmp_path / "home-ray"
    monkeypatch.setenv("AGENTRT_HOME", str(home))
    monkeypatch.setenv("AGENTRT_DB", f"sqlite:///{home / 'agentrt.db'}")
    spread = runner.invoke(
        cli,
        ["run", str(task), "--set", f"output={tmp_path / 'ray.jsonl'}", "--ray", "--replicas", "2"],
    )
    assert spread.exit_code == 0, spread.output
    assert "on 2 replicas: 20 done, 0 failed" in spread.output
    a, b = _records(tmp_path / "plain.jsonl"), _records(tmp_path / "ray.jsonl")
    assert [r["id"] for r in a] == [f"q{i:02d}" for i in range(20)]
    assert b == a
    assert len({r["answer"] for r in a}) > 1  # the inputs really differ


def test_shared_session_task_is_refused_with_ray(cluster_model, tmp_path):
    task = _task(tmp_path, cluster_model, n=2)
    result = CliRunner().invoke(cli, ["run", str(task), "--set", "session.mode=shared", "--ray"])
    assert result.exit_code == 2, result.output
    assert "session.mode: per_input" in result.output
