"""`agentrt bench hyper`: N chains per problem from one prefill, vote, KV accounting, JSON + PNG."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from agentrt.bench.hyper import make_problems
from agentrt.cli import cli
from agentrt.engine.vote import pick
from tests.agent.helpers import save_chat_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_chat_model(tmp_path_factory.mktemp("bench-hyper") / "tiny", "smollm2")


def test_hyper_bench_votes_per_n_and_accounts_kv_bytes(model_dir, tmp_path):
    out = tmp_path / "out"
    args = ["bench", "hyper", "--model", str(model_dir), "--device", "cpu", "--problems", "2",
            "--ns", "1,2,4", "--examples", "3", "--max-new-tokens", "3", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "hyper.json").read_text())
    assert data["problems"] == 2 and data["ns"] == [1, 2, 4]
    assert [r["expected"] for r in data["rows"]] == [p.answer for p in make_problems(2, 0)]
    for row in data["rows"]:
        dms = row["dms"]
        assert dms["n"] == 4 and dms["prefill_tokens"] == 0  # the question was prefilled once
        seeds = [c["seed"] for c in dms["chains"]]
        assert seeds == list(range(seeds[0], seeds[0] + 4))
        assert row["dense"]["kv_bytes"] > 0
    per_n = {p["n"]: p for p in data["summary"]["per_n"]}
    for n, p in per_n.items():  # the accuracy is the vote over the first n chains, recomputed
        hits = 0
        for row in data["rows"]:
            answers = [c["answer"] for c in row["dms"]["chains"][:n]]
            hits += answers[pick(answers, [0] * n, "majority")] == row["expected"]
        assert p["accuracy"] == hits / 2
        assert p["unshared_bytes"] == pytest.approx(n * p["chain_bytes"])
    assert per_n[4]["pool_bytes"] < per_n[4]["unshared_bytes"]  # the prefix is stored once
    assert per_n[1]["pool_bytes"] < per_n[2]["pool_bytes"] < per_n[4]["pool_bytes"]
    assert (out / "hyper.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| 4 | DMS, majority |" in result.output


def test_hyper_bench_refuses_bad_chain_counts(model_dir, tmp_path):
    result = CliRunner().invoke(
        cli, ["bench", "hyper", "--model", str(model_dir), "--ns", "0,2", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2 and "at least 1" in result.output
