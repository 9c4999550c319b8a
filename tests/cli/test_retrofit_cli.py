"""`agentrt retrofit` through click's CliRunner: a whole run, YAML precedence, user errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from agentrt.cli.main import cli
from agentrt.errors import ConfigError, TaskFileError
from tests.dms.test_retrofit import build_model_dir, write_text_data


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(model folder, text data file)."""
    root = tmp_path_factory.mktemp("cli-tiny")
    return build_model_dir(root), write_text_data(root)


def invoke(*args: str) -> Result:
    """Run `agentrt ARGS` in-process."""
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_a_run_end_to_end_with_yaml_and_flags(tiny, tmp_path: Path) -> None:
    model, data = tiny
    config = tmp_path / "retrofit.yaml"
    config.write_text(
        f"model: {model}\nwindow: 4\nseq_len: 64\ntarget_cr: 2\nsteps: 50\nramp_steps: 2\n"
        "lr: 0.003\nbatch_size: 2\nsave_every: 2\neval_fraction: 0.1\nmax_eval_blocks: 2\n"
        "device: cpu\n"
    )
    out = tmp_path / "out"
    result = invoke("retrofit", "--config", config, "--data", data, "--out", out, "--steps", 4)
    assert result.exit_code == 0, result.output
    assert (
        "held-out: compression ratio" in result.stdout and "retrofit_report.json" in result.stdout
    )
    report = json.loads((out / "retrofit_report.json").read_text())
    assert report["steps"] == 4, "the flag wins over the YAML"
    assert report["config"]["window"] == 4 and report["config"]["data"] == [str(data)]
    assert report["heldout"]["blocks"] == 2 and report["heldout"]["compression_ratio"] >= 1
    assert (out / "adapters" / "adapters.safetensors").is_file()
    assert not (out / "model.safetensors").exists(), "adapter runs save only the adapters"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "checkpoint-2",
        "checkpoint-4",
    ]
    log = [json.loads(x) for x in (out / "retrofit_log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log] == [0, 1, 2, 3]
    resumed = invoke(
        "retrofit", "--config", config, "--data", data, "--out", out, "--steps", 6, "--resume"
    )
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((out / "retrofit_report.json").read_text())["steps"] == 6


def test_unknown_yaml_key_names_key_and_line(tiny, tmp_path: Path) -> None:
    model, data = tiny
    config = tmp_path / "r.yaml"
    config.write_text("window: 4\nseq_len: 64\ntarget_crr: 2\n")
    result = invoke(
        "retrofit", "--model", model, "--data", data, "--out", tmp_path / "o", "--config", config
    )
    assert result.exit_code == ConfigError.exit_code, result.output
    assert "r.yaml line 3: unknown key 'target_crr'" in result.stderr
    assert "Traceback" not in result.output


def test_malformed_yaml_and_bad_flag_values_are_config_errors(tiny, tmp_path: Path) -> None:
    model, data = tiny
    config = tmp_path / "r.yaml"
    config.write_text("window: [4\n")
    result = invoke(
        "retrofit", "--model", model, "--data", data, "--out", tmp_path / "o", "--config", config
    )
    assert result.exit_code == ConfigError.exit_code, result.output
    assert "invalid YAML" in result.stderr and "line 2" in result.stderr
    result = invoke(
        "retrofit", "--model", model, "--data", data, "--out", tmp_path / "o", "--target-cr", 0.5
    )
    assert result.exit_code == ConfigError.exit_code, result.output
    assert "target_cr=0.5 must be ≥ 1" in result.stderr


def test_empty_data_is_a_task_file_error(tiny, tmp_path: Path) -> None:
    model, _ = tiny
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    result = invoke(
        "retrofit",
        "--model",
        model,
        "--data",
        empty,
        "--out",
        tmp_path / "o",
        "--seq-len",
        64,
        "--window",
        4,
    )
    assert result.exit_code == TaskFileError.exit_code, result.output
    assert "the data holds no text" in result.stderr
    assert not (tmp_path / "o").exists(), "nothing is written before the data is read"


def test_missing_required_options_are_named(tmp_path: Path) -> None:
    result = invoke("retrofit", "--out", tmp_path / "o")
    assert result.exit_code == ConfigError.exit_code, result.output
    assert "model is required" in result.stderr and "data is required" in result.stderr
