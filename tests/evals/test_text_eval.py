"""`evaluate_text`: perplexity and KL to dense on a user's text, checked against HF's forward."""

from __future__ import annotations

import math

import pytest
import torch

from agentrt.errors import ConfigError
from agentrt.evals.tasks.filler import filler
from agentrt.evals.text_eval import evaluate_text
from tests.evals.helpers import tiny_eval_model

TEXT = " ".join(filler(7, 120))


@pytest.fixture(scope="module")
def model():
    """A plain tiny model with the small test tokenizer."""
    return tiny_eval_model()


def rows_by_policy(result):
    """{policy: TextRow} for one length."""
    return {r.policy: r for r in result.text_rows}


def test_dense_is_the_reference_and_compression_costs_kl(model) -> None:
    result = evaluate_text(
        model, model.tokenizer, TEXT, lengths=[300],
        policies=["dense", "window", "streaming", "tova", "h2o"], crs=[4], chunk=64,
    )  # fmt: skip
    rows = rows_by_policy(result)
    assert set(rows) == {"dense", "window", "streaming", "tova", "h2o"}
    assert rows["dense"].kl == 0.0 and rows["dense"].achieved_cr == 1.0
    for name in ("window", "streaming", "tova", "h2o"):
        row = rows[name]
        assert row.kl > 1e-4 and math.isfinite(row.ppl), name
        assert row.budget == 75 and row.achieved_cr == pytest.approx(4.0), name
    for row in rows.values():
        assert row.ppl == pytest.approx(math.exp(row.nll)) and row.length == 300


def test_dense_perplexity_matches_the_hf_forward(model) -> None:
    ids = model.tokenizer.encode(TEXT)[:300]
    with torch.no_grad():
        logits = model.hf(torch.tensor([ids])).logits[0]
    nll = torch.nn.functional.cross_entropy(logits[:-1].float(), torch.tensor(ids[1:])).item()
    result = evaluate_text(model, model.tokenizer, TEXT, lengths=[300], policies=["dense"], crs=[])
    assert result.text_rows[0].nll == pytest.approx(nll, rel=1e-4)


def test_rule_based_masks_are_exact_whatever_the_chunk(model) -> None:
    kw = dict(lengths=[200], policies=["window"], crs=[4])
    whole = rows_by_policy(evaluate_text(model, model.tokenizer, TEXT, chunk=512, **kw))
    tokenwise = rows_by_policy(evaluate_text(model, model.tokenizer, TEXT, chunk=1, **kw))
    assert tokenwise["window"].nll == pytest.approx(whole["window"].nll, rel=1e-5)
    assert tokenwise["window"].kl == pytest.approx(whole["window"].kl, rel=1e-3, abs=1e-6)


def test_short_texts_are_scored_whole_and_dms_needs_a_dms_model(model) -> None:
    result = evaluate_text(
        model, model.tokenizer, TEXT, lengths=[10**6], policies=["dms", "window"], crs=[2]
    )
    assert [r.policy for r in result.text_rows] == ["window"]
    assert result.text_rows[0].length == len(model.tokenizer.encode(TEXT))
    assert any("scores it whole" in n for n in result.notes)
    assert any("dms skipped" in n for n in result.notes)
    with pytest.raises(ConfigError, match="fewer than 2 tokens"):
        evaluate_text(model, model.tokenizer, "", lengths=[100], policies=["dense"], crs=[])


def test_dms_model_text_mode() -> None:
    dms = tiny_eval_model(dms=True, window=8)
    rows = rows_by_policy(
        evaluate_text(dms, dms.tokenizer, TEXT, lengths=[256], policies=["dms"], crs=[])
    )
    assert set(rows) == {"dms"} and rows["dms"].achieved_cr > 1.2 and rows["dms"].kl > 0


def test_text_mode_matches_the_baselines_to_the_dms_ratio() -> None:
    dms = tiny_eval_model(dms=True, window=8)
    result = evaluate_text(
        dms, dms.tokenizer, TEXT, lengths=[256], policies=["dms", "window"], crs=[2],
        match_dms=True,
    )  # fmt: skip
    rows = [(r.policy, r.cr) for r in result.text_rows]
    ratio = round(result.text_rows[0].achieved_cr, 2)
    assert rows == [("dms", None), ("window", 2.0), ("window", ratio)]
    assert result.text_rows[-1].achieved_cr == pytest.approx(ratio, rel=0.1)
    assert result.text_rows[-1].kl > 0
    assert result.config["match_dms"] is True


def test_plots_keep_nearly_equal_ratios_together(tmp_path, monkeypatch) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from agentrt.evals.plot import MIN_SPAN, plot_text
    from agentrt.evals.result import EvalResult, TextRow

    result = EvalResult()
    for policy, cr, kl in (("dense", 1.0, 0.0), ("dms", 6.169, 0.05), ("tova", 6.170, 0.11)):
        result.text_rows.append(TextRow(8192, policy, cr, None, 7.0, 2.0, kl, cr))
    limits, close = [], plt.close
    monkeypatch.setattr(
        plt, "close", lambda fig: (limits.append(fig.axes[0].get_xlim()), close(fig))
    )
    path = plot_text(result, tmp_path / "text.png")
    lo, hi = limits[0]
    assert path.stat().st_size > 0 and hi / lo >= MIN_SPAN * 0.999 and lo < 6.169 < 6.170 < hi
