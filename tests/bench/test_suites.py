"""`agentrt bench` suites on a tiny model (CPU smoke): files written, counts consistent."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from agentrt.bench.method import Case, Sample, interleaved, paired_ratio, spread
from agentrt.cli import cli
from tests.dms.serving_helpers import tiny_model

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny DMS model (q-neuron flavour, window 4, many tokens marked) saved as a folder."""
    path = tmp_path_factory.mktemp("suite-model")
    tiny_model(window=4, offset=5.0).save_pretrained(path)
    return path


def _bench(model_dir, tmp_path, suite: str, *args: str) -> dict:
    out = tmp_path / suite
    result = CliRunner().invoke(
        cli,
        ["bench", suite, "--model", str(model_dir), "--device", "cpu", "--out", str(out), *args],
    )
    assert result.exit_code == 0, result.output
    data = json.loads((out / f"{suite}.json").read_text())
    assert data["suite"] == suite and data["command"].startswith(f"agentrt bench {suite}")
    assert data["machine"]["cpu_count"] >= 1 and data["machine"]["versions"]["torch"]
    assert (out / f"{suite}.png").read_bytes()[:8] == PNG
    md = (out / f"{suite}.md").read_text()
    assert md.count("\n|---") == 1 and f"`{data['command']}`" in md
    return data


def test_interleaving_rotates_the_order_and_ratios_pair_rounds() -> None:
    order: list[str] = []

    def case(name: str, seconds: float) -> Case:
        return Case(name, lambda: order.append(name) or Sample(seconds, 10))

    samples = interleaved([case("a", 1.0), case("b", 2.0), case("c", 4.0)], repeats=3, warmup=1)
    assert order == list("abc" + "abc" + "bca" + "cab")
    assert [len(v) for v in samples.values()] == [3, 3, 3]
    assert paired_ratio(samples["a"], samples["b"], rate=True)["median"] == 2.0
    assert paired_ratio(samples["c"], samples["a"], rate=False)["median"] == 0.25
    assert spread([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "spread": 1.0, "n": 3}


def test_decode_counts_tokens_per_forward_pass_on_every_side(model_dir, tmp_path) -> None:
    data = _bench(
        model_dir, tmp_path, "decode", "--sessions", "1,2", "--context", "12", "--steps", "3",
        "--repeats", "2", "--warmup", "0",
    )  # fmt: skip
    for row in data["rows"]:
        variants = row["variants"]
        assert set(variants) == {"agentrt DMS", "agentrt dense", "HF generate"}
        for v in variants.values():  # every round: 3 forward passes, one token per session
            assert [t for _, t in v["samples"]] == [3 * row["sessions"]] * 2
        assert variants["agentrt DMS"]["compression_ratio"] > 1.0
        assert variants["agentrt dense"]["compression_ratio"] == 1.0
        assert row["ratio_vs_hf"]["agentrt DMS"]["n"] == 2


def test_decode_refuses_a_context_the_model_cannot_continue(model_dir, tmp_path) -> None:
    limit = json.loads((model_dir / "config.json").read_text())["max_position_embeddings"]
    args = ["--context", str(limit - 6), "--steps", "3", "--repeats", "1", "--warmup", "1"]
    result = CliRunner().invoke(
        cli, ["bench", "decode", "--model", str(model_dir), "--device", "cpu", *args]
    )
    assert result.exit_code == 2, result.output  # 7 more positions needed, 6 left
    assert f"--context {limit - 7} or less" in result.output
    steps = ["--context", "10", "--steps", str(limit), "--repeats", "1", "--warmup", "0"]
    result = CliRunner().invoke(
        cli, ["bench", "decode", "--model", str(model_dir), "--device", "cpu", *steps]
    )
    assert result.exit_code == 2 and "use fewer --steps or --repeats" in result.output


def test_prefill_compares_dms_dense_and_hf(model_dir, tmp_path) -> None:
    data = _bench(model_dir, tmp_path, "prefill", "--lengths", "9,30", "--repeats", "2")
    assert [r["tokens"] for r in data["rows"]] == [9, 30]
    for row in data["rows"]:
        assert {v["tokens"] for v in row["variants"].values()} == {row["tokens"]}
        assert set(row["ratio_vs_hf"]) == {"agentrt DMS", "agentrt dense"}


def test_memory_dms_holds_less_than_dense(model_dir, tmp_path) -> None:
    data = _bench(model_dir, tmp_path, "memory", "--contexts", "40,80", "--budget", "1MiB")
    for row in data["rows"]:
        assert row["kv_bytes"] < row["dense_bytes"] and row["dms_over_dense"] < 1
        assert row["sessions_in_budget"] > row["dense_sessions_in_budget"]
        assert row["dense_sessions_in_budget"] == 2**20 // row["dense_bytes"]


def test_resume_routes_bring_back_the_whole_session(model_dir, tmp_path) -> None:
    data = _bench(model_dir, tmp_path, "resume", "--lengths", "25", "--repeats", "2")
    (row,) = data["rows"]
    assert set(row["variants"]) == {
        "re-prefill",
        "disk, new engine",
        "CPU memory",
        "disk, new process",
        "disk, new process, catalog cold",
    }
    assert row["checkpoint_bytes"] > row["kv_bytes"] * 0.5 and row["save_seconds"] > 0
    assert set(row["speedup_vs_reprefill"]) == set(row["variants"]) - {"re-prefill"}


def test_multiturn_recomputes_no_history_in_a_session(model_dir, tmp_path) -> None:
    data = _bench(
        model_dir, tmp_path, "multiturn", "--turns", "4", "--user-tokens", "5",
        "--answer-tokens", "3",
    )  # fmt: skip
    v = data["variants"]
    context = 4 * (5 + 3)
    assert {x["context"] for x in v.values()} == {context}
    assert v["agentrt session"]["tokens_recomputed"] == 0
    assert v["HF dense cache kept"]["tokens_recomputed"] == 0
    # turn t re-sends the t earlier turns, 8 * (0 + 1 + 2 + 3) tokens; the last answer token
    # of turns 0..2 is forwarded there for the first time, so 3 of them are not recomputed
    assert v["re-send history"]["tokens_recomputed"] == 8 * 6 - 3
    assert v["agentrt session"]["kv_bytes"] < v["agentrt session"]["dense_bytes"]


def test_run_all_smoke_preset_writes_every_suite(model_dir, tmp_path) -> None:
    from agentrt.bench.run_all import PRESETS, main

    out = tmp_path / "all"
    assert main(["--preset", "smoke", "--out", str(out), "--model", str(model_dir)]) == 0
    suites = [s[0] for s in PRESETS["smoke"]]
    assert {s[0] for s in PRESETS["gpu"]} == set(suites) == {s[0] for s in PRESETS["cpu"]}
    for suite in suites:
        assert json.loads((out / f"{suite}.json").read_text())["suite"] == suite
        assert (out / f"{suite}.png").is_file() and (out / f"{suite}.md").is_file()


def test_run_all_returns_the_error_code_of_a_failing_suite(tmp_path) -> None:
    from agentrt.bench.run_all import main

    code = main(["--preset", "smoke", "--out", str(tmp_path), "--model", str(tmp_path / "none")])
    assert code != 0
