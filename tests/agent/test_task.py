"""Task files: every problem names its key and line; nothing but clear errors, before model work."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentrt.agent.task import load_task
from agentrt.errors import AgentRTError, TaskFileError

GOOD = """\
name: demo
model: {model}
system: You answer from the documents.
tools:
  enabled: [read_file, search_text]
  workspace: docs
inputs:
  - id: q1
    prompt: What is the code for {{topic}}?
    vars: {{topic: the vault}}
    files:
      - {{path: docs/notes.txt, mode: expose}}
  - id: q2
    prompt: Summarise.
    files: [docs/notes.txt]
generation: {{max_new_tokens: 32, temperature: 0, seed: 1}}
limits: {{max_steps: 4}}
session: {{mode: shared, checkpoint_every: 1}}
output: out/results.jsonl
"""


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("The vault code is 7341.\n")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    return tmp_path


def _write(folder: Path, text: str) -> Path:
    path = folder / "task.yaml"
    path.write_text(text)
    return path


def test_a_good_task_file_loads(folder):
    spec = load_task(_write(folder, GOOD.format(model="model")))
    assert spec.name == "demo" and [i.id for i in spec.inputs] == ["q1", "q2"]
    assert spec.inputs[0].prompt.startswith("What is the code for the vault?")
    assert "Files you can read with the tools: notes.txt" in spec.inputs[0].prompt
    assert "The vault code is 7341." in spec.inputs[1].prompt  # included
    assert spec.sampling.max_new_tokens == 32 and spec.limits.max_steps == 4
    assert spec.output == folder / "out" / "results.jsonl"
    assert spec.tools.registry().names() == ["read_file", "search_text"]


def test_set_overrides_dotted_keys(folder):
    path = _write(folder, GOOD.format(model="model"))
    spec = load_task(
        path, ["generation.max_new_tokens=64", "session.mode=per_input", "inputs.1.prompt=Hi"]
    )
    assert spec.sampling.max_new_tokens == 64 and spec.session.mode == "per_input"
    assert spec.inputs[1].prompt.startswith("Hi")
    with pytest.raises(TaskFileError, match=r"--set generation.max_new_tokens: expected integer"):
        load_task(path, ["generation.max_new_tokens=lots"])
    with pytest.raises(TaskFileError, match="expected KEY=VALUE"):
        load_task(path, ["generation"])


@pytest.mark.parametrize(
    ("old", "new", "line", "key", "what"),
    [
        ("temperature: 0", "temperature: hot", 16, "generation.temperature", "expected number"),
        ("max_steps: 4", "max_step: 4", 17, "limits.max_step", "unknown key"),
        ("mode: shared", "mode: both", 18, "session.mode", "must be one of"),
        ("  - id: q2", "  - id: q 2", 13, "inputs[1].id", "does not match"),
        ("    prompt: Summarise.", "    promt: Summarise.", 14, "inputs[1].promt", "unknown key"),
        (
            "[read_file, search_text]",
            "[read_file, rm_rf]",
            5,
            "tools.enabled[1]",
            "unknown tool 'rm_rf'",
        ),
        ("workspace: docs", "workspace: nowhere", 6, "tools.workspace", "does not exist"),
        (
            "files: [docs/notes.txt]",
            "files: [docs/missing.txt]",
            15,
            "inputs[1].files[0]",
            "does not exist",
        ),
        ("{{topic}}?", "{{place}}?", 9, "inputs[0].prompt", "{place} has no value"),
        ("id: q2", "id: q1", 13, "inputs[1].id", "already used"),
        ("model: model", "model: ./no-such-model", 2, "model", "does not exist"),
        ("model: model", "model: no-such-org/no-such-model", 2, "model", "unknown model"),
        ("output: out/results.jsonl", "output: [a]", 19, "output", "not allowed here"),
    ],
)
def test_each_violation_names_key_and_line(folder, old, new, line, key, what):
    text = GOOD.format(model="model").replace(
        old.replace("{{", "{").replace("}}", "}"), new.replace("{{", "{").replace("}}", "}")
    )
    assert text != GOOD.format(model="model"), old
    with pytest.raises(TaskFileError) as err:
        load_task(_write(folder, text))
    message = str(err.value)
    assert f"line {line}: {key}: " in message and what in message, message


def test_all_problems_are_reported_together(folder):
    text = (
        GOOD.format(model="model")
        .replace("max_steps: 4", "max_steps: 0")
        .replace("seed: 1", "seed: x")
    )
    with pytest.raises(TaskFileError) as err:
        load_task(_write(folder, text))
    assert "2 problems" in str(err.value)
    assert "line 16: generation.seed" in str(err.value) and "line 17: limits.max_steps" in str(
        err.value
    )


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("", "empty"),
        ("inputs: [", r"line \d+, column \d+: invalid YAML"),
        ("- a\n- b\n", "line 1: the top level must be a mapping"),
        ("inputs: []\ninputs: []\n", "line 2: .*'inputs' appears twice"),
        ("1: x\ninputs: []\n", "line 1: .*must be a plain string"),
        ("name: x\n", "missing required key 'inputs'"),
        ("inputs:\n  - {id: a}\n", r"line 2: inputs\[0\]: missing required key 'prompt'"),
        ("inputs:\n  - {id: a, prompt: 'a {'}\n", r"line 2: inputs\[0\]\.prompt: bad placeholder"),
        (
            "inputs:\n  - {id: a, prompt: p}\ntools: [write_file]\n",
            "needs `tools.allow_write: true`",
        ),
    ],
)
def test_malformed_files(folder, text, pattern):
    with pytest.raises(TaskFileError, match=pattern):
        load_task(_write(folder, text), check_model=False)


def test_missing_task_file(tmp_path):
    with pytest.raises(TaskFileError, match="does not exist"):
        load_task(tmp_path / "nope.yaml")


# -- fuzzing: 1,000 generated task files, only clear errors -------------------------------------

KEYS = [
    "name",
    "model",
    "device",
    "kv_budget",
    "dms",
    "system",
    "tools",
    "inputs",
    "generation",
    "limits",
    "session",
    "output",
    "bogus",
]
SUBKEYS = [
    "id",
    "prompt",
    "files",
    "vars",
    "enabled",
    "workspace",
    "allow_write",
    "max_new_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "max_steps",
    "max_tokens",
    "max_seconds",
    "mode",
    "resume",
    "checkpoint_every",
    "on_context_limit",
    "path",
    "window_size",
    "off",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(
        ["off", "docs", "docs/notes.txt", "read_file", "q1", "{x}", "shared", "summarize", "model"]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(SUBKEYS), inner, max_size=4),
    ),
    max_leaves=12,
)
documents = st.dictionaries(st.sampled_from(KEYS), values, max_size=8)
texts = st.one_of(
    documents.map(lambda d: yaml.safe_dump(d, sort_keys=False)),
    st.text(max_size=80),
    st.builds(
        lambda a, b: a + b,
        documents.map(yaml.safe_dump),
        st.sampled_from(
            ["", ":", "\n  - [", "\n&a [*a]", "\n\t", "\x00", "\nx: !!binary zz", "\n? [1]\n: 2"]
        ),
    ),
)


@settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(text=texts)
def test_fuzzed_task_files_give_clear_errors(folder, text):
    """Any text: a valid spec or a TaskFileError naming a line — never a traceback."""
    path = folder / "fuzz.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_task(path, check_model=False)
    except AgentRTError as err:
        assert isinstance(err, TaskFileError), repr(err)
        message = str(err)
        assert str(path) in message or "--set" in message, message
        assert re.search(r"line \d+|empty|invalid YAML|cannot read", message), message


def test_keep_checkpoints_is_a_session_option(folder):
    path = _write(folder, GOOD.format(model="model"))
    assert load_task(path).session.keep_checkpoints is None
    spec = load_task(path, ["session.keep_checkpoints=5"])
    assert spec.session.keep_checkpoints == 5
    with pytest.raises(TaskFileError, match="keep_checkpoints"):
        load_task(path, ["session.keep_checkpoints=0"])
