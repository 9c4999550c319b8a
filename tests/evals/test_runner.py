"""`evaluate` on tiny random models: result shape, budget math, DMS, an oracle, batching."""

from __future__ import annotations

import copy
import math

import pytest

from agentrt.dms.policies import POLICY_NAMES as DMS_POLICY_NAMES
from agentrt.errors import ConfigError
from agentrt.evals.options import POLICY_NAMES, EvalSpec, parse_length, parse_spec
from agentrt.evals.runner import evaluate, make_items, slot_budget
from tests.evals.helpers import OracleModel, tiny_eval_model

BASELINES = ["window", "streaming", "tova", "h2o"]


@pytest.fixture(scope="module")
def plain_result():
    """All six policies at CR 2 and 4 on a plain tiny model (dms is skipped)."""
    model = tiny_eval_model()
    return evaluate(
        model,
        model.tokenizer,
        tasks=["niah", "vt"],
        lengths=[320],
        policies=["dense", "dms", *BASELINES],
        crs=[2, 4],
        n_items=2,
        seed=0,
        max_new_tokens=4,
        batch_size=2,
    )


def test_result_has_one_row_per_condition_with_finite_numbers(plain_result) -> None:
    rows = plain_result.rows
    assert len(rows) == 2 * (1 + 4 * 2), [(r.task, r.policy, r.cr) for r in rows]
    assert {(r.task, r.policy, r.cr) for r in rows} == {
        (t, p, c)
        for t in ("niah", "vt")
        for p, c in [("dense", 1.0)] + [(b, x) for b in BASELINES for x in (2.0, 4.0)]
    }
    for r in rows:
        assert r.n == 2 and r.length == 320 and 0.0 <= r.accuracy <= 1.0
        assert math.isfinite(r.achieved_cr) and r.achieved_cr >= 1.0
        assert 280 <= r.prompt_tokens <= 320
    assert len(plain_result.items) == 2 * len(rows)
    assert any("dms skipped" in n for n in plain_result.notes)
    assert plain_result.to_dict()["rows"][0]["task"] == "niah"
    table = plain_result.format_table()
    assert "window" in table and "dms skipped" in table


def test_dense_holds_every_token_and_baselines_hit_the_budget(plain_result) -> None:
    for rec in plain_result.items:
        if rec["policy"] == "dense":
            assert rec["compression_ratio"] == 1.0 and rec["budget"] is None
            continue
        budget = slot_budget(320, rec["cr"])
        assert rec["budget"] == budget
        if rec["policy"] in ("window", "streaming", "tova"):  # exactly `budget` slots per stream
            assert rec["compression_ratio"] == pytest.approx(rec["tokens"] / budget)
        assert rec["compression_ratio"] == pytest.approx(rec["cr"], rel=0.1), rec["policy"]


def test_dms_model_reports_its_own_compression() -> None:
    model = tiny_eval_model(dms=True, window=8)
    result = evaluate(
        model,
        model.tokenizer,
        tasks=["niah"],
        lengths=[300],
        policies=["dense", "dms"],
        crs=[],
        n_items=2,
        max_new_tokens=3,
    )
    dense, dms = result.rows
    assert (dense.policy, dms.policy) == ("dense", "dms") and dms.cr is None
    assert dense.achieved_cr == 1.0 and dms.achieved_cr > 1.2
    assert result.config["dms_window"] == 8 and not result.notes


def test_a_reference_oracle_scores_every_task_under_every_policy() -> None:
    """Rendering, tool execution and delta prefills reproduce the reference conversations."""
    model = tiny_eval_model()
    spec = EvalSpec(
        tasks=("niah", "vt", "arith", "agent"), lengths=(600,), policies=("dense", "window"),
        crs=(4.0,), n_items=2, seed=3, max_new_tokens=120,
    )  # fmt: skip
    items = [it for group in make_items(spec, model.tokenizer).values() for it in group]
    oracle = OracleModel(model, items)
    result = evaluate(
        oracle, model.tokenizer, tasks=spec.tasks, lengths=spec.lengths, policies=spec.policies,
        crs=spec.crs, n_items=2, seed=3, max_new_tokens=120, batch_size=3,
    )  # fmt: skip
    by_id = {it.id: it for it in items}
    for rec in result.items:
        assert rec["score"] == 1.0 and rec["error"] is None, rec
        assert rec["replies"] == by_id[rec["id"]].reference_replies()
    agent = [r for r in result.rows if r.task == "agent"]
    assert agent and all(r.tool_calls_valid == 1.0 for r in agent)
    window = [r for r in result.rows if r.policy == "window"]
    assert all(r.achieved_cr > 3.5 for r in window)


def test_batching_does_not_change_results() -> None:
    model = tiny_eval_model(dms=True)
    kw = dict(
        tasks=["vt"], lengths=[300], policies=["dms", "h2o"], crs=[4], n_items=3, max_new_tokens=5
    )
    one = evaluate(model, model.tokenizer, batch_size=1, **kw)
    three = evaluate(model, model.tokenizer, batch_size=3, **kw)
    strip = lambda recs: [(r["id"], r["policy"], r["replies"], r["slots"]) for r in recs]  # noqa: E731
    assert strip(one.items) == strip(three.items)


def test_spec_validation_lists_every_problem() -> None:
    with pytest.raises(ConfigError) as err:
        parse_spec(
            tasks="niah,qa", lengths="1k,abc", policies="dense,lru", crs="2,x,0.5", n_items=0
        )
    msg = err.value.message
    for part in (
        "unknown task 'qa'",
        "'abc'",
        "unknown policy 'lru'",
        "'x'",
        "0.5 is below 1",
        "n=0",
    ):
        assert part in msg, part
    assert "niah" in (err.value.hint or "")
    spec = parse_spec(tasks="niah", lengths="1k, 4k,1500", policies="dense,window", crs="2,8x")
    assert spec.lengths == (1024, 4096, 1500) and spec.crs == (2.0, 8.0)
    assert [c.label for c in spec.conditions()] == ["dense", "window@2x", "window@8x"]
    assert parse_length("1.5k") == 1536
    assert set(POLICY_NAMES) == set(DMS_POLICY_NAMES)
    with pytest.raises(ConfigError, match="at least one compression ratio"):
        parse_spec(tasks="niah", lengths="1k", policies="tova", crs="")
    matched = parse_spec(tasks="niah", lengths="1k", policies="dms,tova", crs="DMS")
    assert matched.match_dms and matched.crs == ()
    with pytest.raises(ConfigError, match="needs the dms policy"):
        parse_spec(tasks="niah", lengths="1k", policies="dense,tova", crs="dms,4")


def test_baselines_run_at_the_ratio_dms_achieved() -> None:
    model = tiny_eval_model(dms=True, window=8)
    result = evaluate(
        model,
        model.tokenizer,
        tasks=["niah"],
        lengths=[300],
        policies=["dense", "streaming", "dms", "tova"],
        crs=[2],
        n_items=2,
        max_new_tokens=3,
        match_dms=True,
    )
    assert result.config["match_dms"] is True
    labels = [(r.policy, r.cr) for r in result.rows]
    dms = result.rows[0]
    ratio = round(dms.achieved_cr, 2)
    assert dms.policy == "dms" and ratio > 1.2
    assert labels[1:] == [
        ("dense", 1.0), ("streaming", 2.0), ("tova", 2.0), ("streaming", ratio), ("tova", ratio)
    ]  # fmt: skip
    for row in result.rows[-2:]:  # the budget follows the matched ratio
        assert row.budget == slot_budget(300, ratio)
        assert row.achieved_cr == pytest.approx(ratio, rel=0.15)
    # a policy named twice runs once; a matched ratio that was asked for already is not rerun
    again = evaluate(
        model, model.tokenizer, tasks=["niah"], lengths=[300],
        policies=["dms", "streaming", "streaming", "dms"], crs=[ratio], n_items=2,
        max_new_tokens=3, match_dms=True,
    )  # fmt: skip
    assert [(r.policy, r.cr) for r in again.rows] == [("dms", None), ("streaming", ratio)]
    plain = tiny_eval_model()
    skipped = evaluate(
        plain, plain.tokenizer, tasks=["niah"], lengths=[300], policies=["dms", "tova"],
        crs=[], n_items=1, max_new_tokens=2, match_dms=True,
    )  # fmt: skip
    assert skipped.rows == [] and any("--cr dms" in note for note in skipped.notes)


def test_the_oracle_also_scores_through_the_plain_fallback_format() -> None:
    """A tokenizer without a chat template: prompts and stops of the documented plain format."""
    model = tiny_eval_model()
    model.tokenizer = copy.deepcopy(model.tokenizer)
    model.tokenizer.chat_template = None
    spec = EvalSpec(
        tasks=("niah", "vt", "arith"), lengths=(400,), policies=("dense",), crs=(), n_items=1,
        max_new_tokens=120,
    )  # fmt: skip
    items = [it for group in make_items(spec, model.tokenizer).values() for it in group]
    result = evaluate(
        OracleModel(model, items), model.tokenizer, tasks=spec.tasks, lengths=spec.lengths,
        policies=spec.policies, crs=spec.crs, n_items=1, max_new_tokens=120,
    )  # fmt: skip
    assert [r.accuracy for r in result.rows] == [1.0, 1.0, 1.0]


def test_bad_serving_settings_are_config_errors() -> None:
    model = tiny_eval_model()
    kw = dict(tasks=["niah"], lengths=[200], policies=["dense"], crs=[], n_items=1)
    with pytest.raises(ConfigError, match="batch_size=0"):
        evaluate(model, model.tokenizer, batch_size=0, **kw)
    with pytest.raises(ConfigError, match="prefill_chunk=0"):
        evaluate(model, model.tokenizer, prefill_chunk=0, **kw)
    with pytest.raises(ConfigError, match="task agent: length 200 is below the shortest prompt"):
        evaluate(model, model.tokenizer, **{**kw, "tasks": ["agent"]})
