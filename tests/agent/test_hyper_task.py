"""Hyper-scaling in task files: generation.samples / vote / answer_pattern through `agentrt run`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from agentrt.agent.task import load_task
from agentrt.cli.main import cli
from agentrt.engine.vote import extract_answer
from agentrt.errors import TaskFileError
from tests.agent.helpers import save_chat_model

ROOT = Path(__file__).resolve().parents[2]
PATTERN = r"(\w+)"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_chat_model(tmp_path_factory.mktemp("m") / "tiny", "smollm2")


def _task(tmp_path: Path, generation: str, model: str = "model") -> Path:
    (tmp_path / "model").mkdir(exist_ok=True)
    (tmp_path / "model" / "config.json").write_text("{}")
    path = tmp_path / "task.yaml"
    path.write_text(
        f"model: {model}\ndevice: cpu\ninputs:\n  - {{id: q, prompt: 'What is 2 + 3?'}}\n"
        f"generation: {generation}\nsession: {{mode: per_input}}\noutput: out.jsonl\n"
    )
    return path


def test_samples_vote_and_pattern_load(tmp_path):
    spec = load_task(
        _task(tmp_path, "{temperature: 0.7, samples: 4, vote: first, answer_pattern: '(\\d+)'}")
    )
    assert spec.hyper is not None and spec.hyper.samples == 4
    assert spec.hyper.vote.vote == "first" and spec.hyper.vote.answer_pattern == r"(\d+)"
    assert load_task(_task(tmp_path, "{temperature: 0.7, samples: auto}")).hyper.samples == "auto"
    assert load_task(_task(tmp_path, "{temperature: 0.7}")).hyper is None


@pytest.mark.parametrize(
    ("generation", "message"),
    [
        ("{samples: 4}", "identical chains; set generation.temperature"),
        ("{temperature: 1, vote: majority}", "vote needs generation.samples"),
        ("{temperature: 1, samples: 2, answer_pattern: '('}", "not a valid regex"),
        ("{temperature: 1, samples: 0}", "generation.samples"),
        ("{temperature: 1, samples: 2, vote: best}", "generation.vote"),
    ],
)
def test_bad_hyper_keys_name_the_key(tmp_path, generation, message):
    with pytest.raises(TaskFileError, match=message) as err:
        load_task(_task(tmp_path, generation))
    assert "line 5" in err.value.message or "generation" in err.value.message


def test_run_votes_over_the_chains_and_records_them(model_dir, tmp_path):
    """`agentrt run` with samples: 3: one prefill per turn, three chains, the vote recorded."""
    task = _task(
        tmp_path,
        f"{{max_new_tokens: 6, temperature: 1.0, seed: 3, samples: 3, answer_pattern: '{PATTERN}'}}",
        model=str(model_dir),
    )
    result = CliRunner().invoke(cli, ["run", str(task)])
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    samples = record["samples"]
    assert samples["n"] == 3 and len(samples["answers"]) == 3 and samples["turns"] == 1
    assert [c["seed"] for c in samples["chains"]] == [
        samples["chains"][0]["seed"] + i for i in range(3)
    ]
    assert all(c["kv_bytes"] > 0 and c["tokens"] >= 1 for c in samples["chains"])
    assert samples["prefill_tokens"] == 0  # the chains re-read nothing
    assert samples["votes"] and max(samples["votes"].values()) >= 1
    won = samples["chains"][samples["winner"]]
    assert record["tokens"]["generated"] == won["tokens"]  # the winner is the continuation
    if samples["answer"] is not None:
        assert extract_answer(record["answer"], PATTERN) == samples["answer"]
    again = tmp_path / "again"
    again.mkdir()
    task2 = again / "task.yaml"
    task2.write_text(task.read_text())
    assert CliRunner().invoke(cli, ["run", str(task2)]).exit_code == 0
    (record2,) = [json.loads(line) for line in (again / "out.jsonl").read_text().splitlines()]
    assert record2["samples"]["answers"] == samples["answers"]  # seeded: the same vote


def test_auto_samples_states_the_chosen_n(model_dir, tmp_path):
    task = _task(
        tmp_path,
        "{max_new_tokens: 4, temperature: 1.0, seed: 1, samples: auto}",
        model=str(model_dir),
    )
    result = CliRunner().invoke(cli, ["run", str(task), "--set", "kv_budget=256KiB"])
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    note = record["samples"]["n_note"]
    assert note.startswith(f"n=auto: {record['samples']['n']} chains fit")


def test_the_example_task_loads():
    spec = load_task(ROOT / "examples" / "hyper-scaling.yaml", check_model=False)
    assert spec.hyper is not None and spec.hyper.samples == "auto"
    assert spec.hyper.vote.answer_pattern is not None


def test_a_stop_mid_turn_keeps_the_whole_winning_chain():
    """The chains are already in the cache when the loop streams the winner: Ctrl-C keeps it."""
    from agentrt import Engine
    from agentrt.agent import Agent, AgentCallbacks, Limits
    from agentrt.agent.hyper import HyperSpec, ParallelDecoder
    from agentrt.engine import SamplingParams
    from tests.agent.helpers import chat_model

    eng = Engine(chat_model("smollm2"), num_blocks=3000, block_size=8)
    decoder = ParallelDecoder(HyperSpec(samples=3))

    class StopAtFirstToken(AgentCallbacks):
        def on_token(self, text):
            agent.stop()

    agent = Agent(
        eng.new_session(seed=0),
        sampling=SamplingParams(max_new_tokens=6, temperature=1.0, seed=2, ignore_eos=True),
        limits=Limits(max_new_tokens=6),
        decoder=decoder,
        callbacks=StopAtFirstToken(),
    )
    res = agent.ask("Hello there")
    assert res.finish_reason == "interrupted"
    (turn,) = decoder.results
    assert res.generated_tokens == len(turn.chains[turn.winner].token_ids) == 6
    s = agent.session
    assert s.tokens + [s.pending_token] == agent.ids  # the loop and the cache agree
    eng.close()
