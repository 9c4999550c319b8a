"""--kv-dtype / AGENTRT_KV_DTYPE / task `kv_dtype` reach the engine; resume keeps a session's
stored K/V dtype unless told otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result

from agentrt import Engine
from agentrt.agent.runner import open_engine
from agentrt.agent.task import load_task
from agentrt.cli.main import cli
from agentrt.errors import TaskFileError
from agentrt.settings import ENV_KV_DTYPE
from tests.runtime.tokenizer_fixture import save_byte_model


def invoke(*args: str) -> Result:
    """Run the production CLI in-process."""
    return CliRunner().invoke(cli, list(args))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny DMS model with a byte-level tokenizer, saved as an HF folder."""
    return save_byte_model(tmp_path_factory.mktemp("model"))


def _save(model_dir: Path, kv_dtype: str) -> None:
    eng = Engine.from_pretrained(
        model_dir, device="cpu", num_blocks=2000, block_size=4, kv_dtype=kv_dtype
    )
    try:
        s = eng.new_session("alpha", seed=3)
        s.prefill(list(range(3, 40)))
        eng.save(s)
    finally:
        eng.close()


@pytest.mark.parametrize(
    "path",
    [("chat",), ("serve",), ("resume",), ("bench", "prefill"), ("bench", "resume")],
    ids=" ".join,
)
def test_commands_that_build_engines_take_kv_dtype(path):
    cmd = cli
    for name in path:
        cmd = cmd.commands[name]
    option = next(p for p in cmd.params if p.name == "kv_dtype")
    assert "--kv-dtype" in option.opts and option.envvar == ENV_KV_DTYPE


def test_resume_keeps_the_stored_dtype_unless_a_flag_asks_to_convert(model_dir, monkeypatch):
    _save(model_dir, "float32")  # a session saved with fp32 K/V (e.g. before bf16 storage)
    monkeypatch.delenv(ENV_KV_DTYPE)  # default: auto, bf16 on this CPU
    ok = invoke("resume", "alpha", "--model", str(model_dir), "-n", "2")
    assert ok.exit_code == 0, ok.output
    refused = invoke("resume", "alpha", "--model", str(model_dir), "-n", "2", "--kv-dtype", "bf16")
    assert refused.exit_code == 2 and "bf16" in refused.output  # not a choice: a usage error
    import os

    from agentrt.sessions import SessionStore, open_catalog
    from agentrt.sessions.checkpoint import read_header

    converted = invoke(
        "resume", "alpha", "--model", str(model_dir), "-n", "2", "--kv-dtype", "bfloat16"
    )
    assert converted.exit_code == 0, converted.output  # asked for: converted, with a warning
    st = SessionStore(open_catalog(os.environ["AGENTRT_DB"]))
    newest = st.latest_checkpoint("alpha")
    st.close()
    assert newest is not None and newest.kind == "full"  # a new chain in the new dtype
    assert read_header(Path(os.environ["AGENTRT_HOME"]) / newest.file)["dtype"] == "bfloat16"


def test_env_reaches_the_engine_and_a_bad_value_names_the_variable(model_dir, monkeypatch):
    monkeypatch.setenv(ENV_KV_DTYPE, "bfloat16")
    eng = Engine.from_pretrained(model_dir, device="cpu", num_blocks=64, block_size=4)
    assert eng.kv_dtype == torch.bfloat16
    eng.close()
    monkeypatch.setenv(ENV_KV_DTYPE, "int4")
    result = invoke("resume", "alpha", "--model", str(model_dir))
    assert result.exit_code == 2 and ENV_KV_DTYPE in result.output


def test_task_file_kv_dtype(tmp_path, model_dir):
    task = tmp_path / "task.yaml"
    body = f"model: {model_dir}\ndevice: cpu\nkv_budget: 4MiB\ninputs: [{{id: a, prompt: hi}}]\n"
    task.write_text(body + "kv_dtype: bfloat16\n")
    spec = load_task(task)
    assert spec.kv_dtype == "bfloat16"
    eng = open_engine(spec, home=tmp_path / "h", db=f"sqlite:///{tmp_path / 'h' / 'c.db'}")
    assert eng.kv_dtype == torch.bfloat16
    eng.close()
    assert load_task(task, ["kv_dtype=model"]).kv_dtype == "model"
    task.write_text(body)
    assert load_task(task).kv_dtype is None  # the engine then reads AGENTRT_KV_DTYPE
    task.write_text(body + "kv_dtype: fp8\n")
    with pytest.raises(TaskFileError, match="kv_dtype"):
        load_task(task)
