"""`agentrt run` end to end on a tiny model: the quickstart file, its JSONL, the catalog, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from agentrt.agent.runner import TaskRunner, open_engine, open_store, read_records
from agentrt.agent.task import load_task
from agentrt.cli.main import cli
from tests.agent.helpers import save_chat_model
from tests.conftest import prepared_default_model

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
FIELDS = {
    "id",
    "status",
    "answer",
    "tool_calls",
    "tokens",
    "kv_bytes",
    "compression_ratio",
    "timings",
    "session",
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_chat_model(tmp_path_factory.mktemp("m") / "tiny", "smollm2")


def _sets(model_dir: Path | str, out: Path, *extra: str) -> list[str]:
    args = ["--set", f"model={model_dir}", "--set", f"output={out}", "--device", "cpu"]
    for item in extra:
        args += ["--set", item]
    return args


def test_quickstart_runs_records_and_resumes_in_a_new_process(model_dir, tmp_path):
    """The quickstart file on a tiny model: exit 0, JSONL with the fields, the session in the
    catalog, and a second process continues that session from its checkpoint."""
    _quickstart_then_resume(model_dir, tmp_path, "generation.max_new_tokens=12")


def _quickstart_then_resume(model: Path | str, tmp_path: Path, *sets: str) -> dict:
    out = tmp_path / "out.jsonl"
    runner = CliRunner()
    result = runner.invoke(cli, ["run", str(QUICKSTART), *_sets(model, out, *sets)])
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert FIELDS <= set(record) and record["id"] == "airlock-code" and record["status"] == "done"
    assert record["tool_calls"] and record["tool_calls"][0]["name"] in ("search_text", None)
    tokens = record["tokens"]
    assert tokens["session"] == tokens["prefilled"] + tokens["generated"]
    assert record["kv_bytes"] > 0 and record["compression_ratio"] >= 1.0
    listing = runner.invoke(cli, ["sessions", "ls"])
    assert "quickstart" in listing.output, listing.output
    store = open_store()
    run = store.runs.get_run(_run_id(result.output))
    assert run.status == "done" and [i.status for i in store.runs.run_items(run.id)] == ["done"]
    store.close()

    # a second process continues the saved session with a new input
    docs = ROOT / "examples" / "docs"
    task = tmp_path / "more.yaml"
    task.write_text(
        QUICKSTART.read_text()
        .replace("path: docs/", f"path: {docs}/")
        .replace("workspace: docs", f"workspace: {docs}")
        .replace("id: airlock-code", "id: follow-up")
        .replace("  name: quickstart\n", "  name: quickstart\n  resume: true\n")
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", "from agentrt.cli import main; main()", "run", str(task),
         *_sets(model, tmp_path / "more.jsonl", *sets)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=1800,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (second,) = read_records(tmp_path / "more.jsonl").values()
    assert second["session"] == "quickstart"
    grown = second["tokens"]["prefilled"] + second["tokens"]["generated"]
    assert second["tokens"]["session"] == tokens["session"] + grown
    return record


def _run_id(output: str) -> str:
    return output.split("run ", 1)[1].split(":", 1)[0]


def test_interrupted_run_resumes_skipping_finished_inputs(model_dir, tmp_path):
    """Stop mid-input: the session is checkpointed, the run recorded as cancelled; --resume skips
    the finished input and continues the session from the checkpoint."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("alpha\n")
    task = tmp_path / "batch.yaml"
    task.write_text(
        f"model: {model_dir}\ndevice: cpu\ninputs:\n"
        "  - {id: one, prompt: First question}\n  - {id: two, prompt: Second question}\n"
        "  - {id: three, prompt: Third question}\ngeneration: {max_new_tokens: 6}\n"
        "session: {name: batch, checkpoint_every: 1}\noutput: out.jsonl\n"
    )
    spec = load_task(task)
    engine, store = open_engine(spec), open_store()

    class StopInSecond:
        runner = None

        def on_token(self, text):
            agent = self.runner.agent
            if agent is not None and any(m["content"] == "Second question" for m in agent.messages):
                agent.stop()

        def __getattr__(self, name):
            return lambda *a, **k: None

    cb = StopInSecond()
    runner = TaskRunner(spec, engine, store, callbacks=cb)
    cb.runner = runner
    summary = runner.run()
    assert summary.interrupted and [r["status"] for r in summary.records] == ["done", "interrupted"]
    assert store.runs.get_run(summary.run_id).status == "cancelled"
    saved_tokens = store.get_session("batch").tokens
    assert saved_tokens == len(runner.agent.session.tokens)  # the checkpoint holds them all
    engine.close()

    result = CliRunner().invoke(cli, ["run", str(task), "--resume"])
    assert result.exit_code == 0, result.output
    records = read_records(tmp_path / "out.jsonl")
    assert [r["status"] for r in records.values()] == ["done", "done", "done"]
    assert records["two"]["session"] == "batch"
    assert records["two"]["tokens"]["session"] > saved_tokens
    store.close()


def test_failed_input_gives_a_non_zero_exit(model_dir, tmp_path):
    """An input that hits the context limit fails: its record says why and the exit code is 1."""
    task = tmp_path / "t.yaml"
    task.write_text(
        f"model: {model_dir}\ndevice: cpu\ninputs:\n  - {{id: long, prompt: '{'word ' * 50}'}}\n"
        "generation: {max_new_tokens: 4}\nlimits: {max_tokens: 20}\noutput: o.jsonl\n"
    )
    result = CliRunner().invoke(cli, ["run", str(task), "--set", "dms=off"])
    assert result.exit_code == 1, result.output
    (rec,) = read_records(tmp_path / "o.jsonl").values()
    assert rec["status"] == "failed" and rec["finish_reason"] == "max_tokens"


def test_bad_task_fails_before_model_work(tmp_path, monkeypatch):
    """An unknown tool and a missing file are reported (key + line) and no model is loaded."""
    task = tmp_path / "bad.yaml"
    task.write_text(
        "model: ./nowhere\ntools: [read_file, teleport]\ninputs:\n  - {id: a, prompt: p, files: [x.txt]}\n"
    )
    monkeypatch.setattr(
        "agentrt.engine.Engine.from_pretrained", lambda *a, **k: pytest.fail("model loaded")
    )
    result = CliRunner().invoke(cli, ["run", str(task)])
    assert result.exit_code == 6, result.output
    for part in (
        "line 1: model",
        "line 2: tools[1]: unknown tool 'teleport'",
        "line 4: inputs[0].files[0]",
    ):
        assert part in result.output, result.output


# read at collection, before the home fixture: AGENTRT_MODEL, else the default model that
# README's first command prepared in the caller's home
DEFAULT_MODEL = os.environ.get("AGENTRT_MODEL") or str(prepared_default_model() or "")


@pytest.mark.model
@pytest.mark.skipif(
    not DEFAULT_MODEL or not Path(DEFAULT_MODEL).is_dir(),
    reason="needs the default model prepared (README's first command) or AGENTRT_MODEL",
)
def test_quickstart_on_the_default_model(tmp_path):
    """The quickstart on the real default model: it calls search_text and answers; the session
    resumes in a second process and continues."""
    record = _quickstart_then_resume(DEFAULT_MODEL, tmp_path)
    assert record["tool_calls"][0]["name"] == "search_text"


def test_a_shared_run_rolls_over_near_the_context_limit(tmp_path):
    """on_context_limit: summarize — the run goes on in a `-cont` session seeded with a summary;
    the old session is checkpointed and closed."""
    model = save_chat_model(tmp_path / "short", "smollm2", max_positions=700)
    inputs = "".join(
        f"  - {{id: q{i}, prompt: Tell me more about the quick brown fox}}\n" for i in range(12)
    )
    task = tmp_path / "long.yaml"
    task.write_text(
        f"model: {model}\ndevice: cpu\ninputs:\n{inputs}generation: {{max_new_tokens: 8}}\n"
        "session: {name: long, on_context_limit: summarize, summary_tokens: 8}\noutput: o.jsonl\n"
        "dms: {window_size: 8}\n"
    )
    result = CliRunner().invoke(cli, ["run", str(task)])
    assert result.exit_code == 0, result.output
    records = list(read_records(tmp_path / "o.jsonl").values())
    assert all(r["status"] == "done" for r in records) and sum(r["rollovers"] for r in records) >= 1
    assert records[-1]["session"].startswith("long-cont")
    store = open_store()
    first = store.messages(records[-1]["session"])[0]
    assert first.role == "system" and "Summary of the conversation so far" in first.content
    assert store.messages("long")[-1].role == "assistant"  # the summary, checkpointed
    store.close()


def test_ctrl_c_checkpoints_and_records_the_run_as_cancelled(model_dir, tmp_path):
    """SIGINT to `agentrt run`: exit 130, the session checkpointed, the run cancelled."""
    import signal
    import time

    inputs = "".join(f"  - {{id: q{i}, prompt: Question {i}}}\n" for i in range(40))
    task = tmp_path / "many.yaml"
    task.write_text(
        f"model: {model_dir}\ndevice: cpu\ninputs:\n{inputs}generation: {{max_new_tokens: 48}}\n"
        "session: {name: many, checkpoint_every: 5}\noutput: o.jsonl\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from agentrt.cli import main; main()", "-q", "run", str(task)],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    out = tmp_path / "o.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (out.is_file() and out.read_text().count("\n") >= 1):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    assert "continue with --resume" in stderr
    records = list(read_records(out).values())
    assert len(records) < 40  # stopped mid-input ("interrupted") or between two ("done")
    assert records[-1]["status"] in ("interrupted", "done")
    assert all(r["status"] == "done" for r in records[:-1])
    store = open_store()
    (run,) = [r for r in [store.runs.get_run(_run_id(stderr))]]
    assert run.status == "cancelled"
    assert store.get_session("many").tokens > 0  # checkpointed at the interruption
    store.close()
