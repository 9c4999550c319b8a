"""`TaskSpec`: a validated task file — everything checked before any model work starts.

`load_task(path, sets)` reads the YAML, applies `--set key=value` overrides, checks the
JSON Schema (agentrt/agent/task_schema.json), then the things a schema cannot see: files
and the workspace exist, tools are known and permitted, `{placeholders}` have values,
input ids are unique, the model can be found. All problems come back in one
`TaskFileError`, each with its key and line.
"""

from __future__ import annotations

import importlib
import importlib.util
import string
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentrt.agent.hyper import HyperSpec
from agentrt.agent.loop import ContextPolicy, Limits
from agentrt.agent.task_file import Located, apply_sets, get, read_task_yaml, schema_problems
from agentrt.engine import SamplingParams
from agentrt.errors import AgentRTError, TaskFileError

BUILTIN_TOOLS = ("calculator", "read_file", "list_dir", "search_text", "write_file", "python")
FILE_TOOLS = ("read_file", "list_dir", "search_text")
PERMISSION_KEYS = {"write_file": "allow_write", "python": "allow_python"}
MAX_INCLUDE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class FileRef:
    """A file of an input: `include` pastes it into the prompt, `expose` names it for the tools."""

    path: Path
    mode: str
    shown_as: str  # the name the model sees (relative to the workspace when exposed)


@dataclass(frozen=True)
class InputSpec:
    """One input: its id and the final prompt (placeholders filled, included files appended)."""

    id: str
    prompt: str = field(repr=False)
    files: tuple[FileRef, ...] = ()


@dataclass(frozen=True)
class ToolsSpec:
    """The tools a task enables and the permission policy they run under."""

    enabled: tuple[str, ...] = ()
    workspace: Path = Path(".")
    allow_write: bool = False
    allow_python: bool = False
    choice: str = "auto"  # auto, required, or a tool name the first turn must call
    user_tools: tuple[Any, ...] = ()  # agentrt.tools.Tool objects from `modules`

    def registry(self) -> Any:
        """A ToolRegistry with the enabled tools under this spec's permission policy."""
        from agentrt.tools import PermissionPolicy, ToolRegistry, builtin_registry

        policy = PermissionPolicy(
            self.workspace, allow_write=self.allow_write, allow_python=self.allow_python
        )
        builtins = builtin_registry(policy)
        users = {t.name: t for t in self.user_tools}
        registry = ToolRegistry(policy)
        for name in self.enabled:
            registry.register(users[name] if name in users else builtins.get(name))
        return registry


@dataclass(frozen=True)
class SessionSpec:
    """How inputs map to sessions, and checkpointing."""

    name: str
    mode: str = "shared"  # one conversation for all inputs, or one session per input
    resume: bool = False
    checkpoint_every: int = 1  # inputs between checkpoints (0: only at the end)
    keep_checkpoints: int | None = None  # restore points kept (None: AGENTRT_KEEP_CHECKPOINTS)
    context: ContextPolicy = ContextPolicy()


@dataclass(frozen=True)
class TaskSpec:
    """A validated task file."""

    path: Path
    name: str
    model: str | None
    device: str
    kv_budget: str | int
    kv_dtype: str | None  # K/V storage dtype; None: AGENTRT_KV_DTYPE, else auto
    dms: Any  # None (the model's own), "off", or a dict of DMS options
    system: str | None = field(repr=False)
    tools: ToolsSpec
    inputs: tuple[InputSpec, ...]
    sampling: SamplingParams
    limits: Limits
    session: SessionSpec
    output: Path
    options: dict[str, Any] = field(repr=False, default_factory=dict)  # the values, for the catalog
    hyper: HyperSpec | None = None  # generation.samples: N chains per turn, voted


def load_task(
    path: str | Path, sets: list[str] | None = None, *, check_model: bool = True
) -> TaskSpec:
    """Read and validate a task file (+ `--set` overrides); TaskFileError lists every problem."""
    file = Path(path)
    located = read_task_yaml(file)
    apply_sets(located, list(sets or []))
    problems = schema_problems(located)
    if problems:
        raise _many(file, problems)
    return _build(located, file.resolve().parent, check_model=check_model)


def _many(file: Path, problems: list[str]) -> TaskFileError:
    head = (
        f"{file}: {len(problems)} problem{'s' * (len(problems) > 1)}:\n  "
        if len(problems) > 1
        else ""
    )
    return TaskFileError(
        head + "\n  ".join(problems), hint="see docs/AGENT.md for the task file keys"
    )


def _build(loc: Located, base: Path, *, check_model: bool) -> TaskSpec:
    v = loc.values
    problems: list[str] = []
    name = v.get("name") or Path(loc.source).stem
    if not _ok_name(name):
        problems.append(
            loc.problem(("name",), f"{name!r} is not a valid run name (use letters, digits, . _ -)")
        )
    tools = _tools(loc, base, problems)
    inputs = _inputs(loc, base, tools, problems)
    gen = v.get("generation", {})
    lim = v.get("limits", {})
    sess = v.get("session", {})
    try:
        sampling = SamplingParams(
            max_new_tokens=gen.get("max_new_tokens", 256),
            temperature=gen.get("temperature", 0.0),
            top_p=gen.get("top_p", 1.0),
            seed=gen.get("seed"),
            stop_strings=tuple(gen.get("stop", ())),
        )
        limits = Limits(max_new_tokens=sampling.max_new_tokens, **lim)
        context = ContextPolicy(
            on_limit=sess.get("on_context_limit", "stop"),
            summary_tokens=sess.get("summary_tokens", 256),
        )
    except AgentRTError as err:
        problems.append(loc.problem(("generation",), err.message))
        sampling, limits, context = SamplingParams(), Limits(), ContextPolicy()
    hyper = _hyper(loc, sampling, problems)
    output = get(v, "output", "path") if isinstance(v.get("output"), dict) else v.get("output")
    out_path = (base / output) if output else base / f"{name}.jsonl"
    if out_path.exists() and not out_path.is_file():
        problems.append(loc.problem(("output",), f"{out_path} exists and is not a file"))
    model = v.get("model")
    if check_model:
        problem = model_problem(model, base)
        if problem:
            problems.append(loc.problem(("model",), problem))
    if problems:
        raise _many(Path(loc.source), problems)
    if model is not None and (base / model).is_dir():
        model = str((base / model).resolve())
    dms = v.get("dms")
    return TaskSpec(
        path=Path(loc.source),
        name=name,
        model=model,
        device=v.get("device", "auto"),
        kv_budget=v.get("kv_budget", "1GiB"),
        kv_dtype=v.get("kv_dtype"),
        dms="off" if dms is False else dms,
        system=v.get("system"),
        tools=tools,
        inputs=tuple(inputs),
        sampling=sampling,
        limits=limits,
        session=SessionSpec(
            name=sess.get("name", name),
            mode=sess.get("mode", "shared"),
            resume=sess.get("resume", False),
            checkpoint_every=sess.get("checkpoint_every", 1),
            keep_checkpoints=sess.get("keep_checkpoints"),
            context=context,
        ),
        output=out_path,
        options={k: v[k] for k in v if k != "inputs"},
        hyper=hyper,
    )


def _hyper(loc: Located, sampling: SamplingParams, problems: list[str]) -> HyperSpec | None:
    """generation.samples / vote / answer_pattern as a HyperSpec (None without `samples`)."""
    from agentrt.engine.vote import VoteSpec

    gen = loc.values.get("generation", {})
    samples = gen.get("samples")
    if samples is None:
        for key in ("vote", "answer_pattern"):
            if key in gen:
                problems.append(
                    loc.problem(("generation", key), f"{key} needs generation.samples (N or auto)")
                )
        return None
    if samples != 1 and sampling.greedy:
        problems.append(
            loc.problem(
                ("generation", "samples"),
                f"samples={samples} with greedy decoding gives {samples} identical chains; "
                "set generation.temperature > 0 (e.g. 0.7)",
            )
        )
    try:
        vote = VoteSpec(gen.get("vote", "majority"), gen.get("answer_pattern"))
    except AgentRTError as err:
        problems.append(loc.problem(("generation", "answer_pattern"), err.message))
        return None
    return HyperSpec(samples=samples, vote=vote)


def _ok_name(name: str) -> bool:
    return bool(name) and len(name) <= 64 and all(c.isalnum() or c in "._-" for c in name)


def model_problem(model: str | None, base: Path) -> str | None:
    """Why `model` cannot be served (None when it can be found); no weights are loaded."""
    if model is None:
        from agentrt.settings import default_model

        model = default_model()
    from agentrt.models.registry import KNOWN_MODELS

    if model in KNOWN_MODELS:  # a known model: prepared on first use (docs/MODELS.md)
        return None
    for candidate in (base / model, Path(model).expanduser()):
        if candidate.is_dir():
            if not (candidate / "config.json").is_file():
                return f"{candidate} has no config.json: not a model folder"
            return None
    if model.startswith((".", "/", "~")) or Path(model).suffix:
        return f"model folder {model!r} does not exist"
    try:  # a hub id: only what the local cache already holds (no download here)
        from huggingface_hub import snapshot_download

        snapshot_download(model, local_files_only=True, allow_patterns=["config.json"])
    except Exception:  # noqa: BLE001 - any failure means: not available offline
        return f"unknown model {model!r}: not a folder, and not in the local model cache"
    return None


def _tools(loc: Located, base: Path, problems: list[str]) -> ToolsSpec:
    raw = loc.values.get("tools")
    if raw is None:
        return ToolsSpec(workspace=base)
    opts = {"enabled": raw} if isinstance(raw, list) else raw
    key = ("tools",) if isinstance(raw, list) else ("tools", "enabled")
    ws_raw = opts.get("workspace")
    workspace = (base / ws_raw).resolve() if ws_raw else base
    if not workspace.is_dir():
        problems.append(loc.problem(("tools", "workspace"), f"folder {ws_raw!r} does not exist"))
    user_tools = []
    for i, module in enumerate(opts.get("modules", [])):
        try:
            user_tools.extend(_module_tools(module, base))
        except TaskFileError as err:
            problems.append(loc.problem(("tools", "modules", i), err.message))
    known = {*BUILTIN_TOOLS, *(t.name for t in user_tools)}
    enabled = tuple(opts.get("enabled", ()))
    for i, name in enumerate(enabled):
        path = (*key, i)
        if name not in known:
            problems.append(
                loc.problem(path, f"unknown tool {name!r}; known tools: {', '.join(sorted(known))}")
            )
        elif name in PERMISSION_KEYS and not opts.get(PERMISSION_KEYS[name], False):
            problems.append(
                loc.problem(path, f"tool {name!r} needs `tools.{PERMISSION_KEYS[name]}: true`")
            )
    choice = opts.get("choice", "auto")
    if choice not in ("auto", "required") and choice not in enabled:
        problems.append(
            loc.problem(("tools", "choice"), f"{choice!r} is not auto, required or an enabled tool")
        )
    return ToolsSpec(
        enabled=enabled,
        choice=choice,
        workspace=workspace,
        allow_write=opts.get("allow_write", False),
        allow_python=opts.get("allow_python", False),
        user_tools=tuple(user_tools),
    )


def _module_tools(module: str, base: Path) -> list[Any]:
    """The `agentrt.tools.Tool` objects defined at the top of a module (file path or dotted name)."""
    from agentrt.tools import Tool

    try:
        if module.endswith(".py"):
            file = (base / module).resolve()
            if not file.is_file():
                raise TaskFileError(f"tool module {module!r} does not exist")
            spec = importlib.util.spec_from_file_location(f"agentrt_user_tools_{file.stem}", file)
            if spec is None or spec.loader is None:
                raise TaskFileError(f"cannot import tool module {module!r}")
            mod = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = mod
            spec.loader.exec_module(mod)
        else:
            mod = importlib.import_module(module)
    except TaskFileError:
        raise
    except Exception as err:  # noqa: BLE001 - user code: report, don't crash
        raise TaskFileError(
            f"cannot import tool module {module!r}: {type(err).__name__}: {err}"
        ) from err
    tools = [obj for obj in vars(mod).values() if isinstance(obj, Tool)]
    if not tools:
        raise TaskFileError(
            f"tool module {module!r} defines no tools (decorate functions with @tool)"
        )
    return tools


def _inputs(loc: Located, base: Path, tools: ToolsSpec, problems: list[str]) -> list[InputSpec]:
    out = []
    seen: dict[str, int] = {}
    for i, item in enumerate(loc.values["inputs"]):
        ident = item["id"]
        if ident in seen:
            problems.append(
                loc.problem(
                    ("inputs", i, "id"), f"id {ident!r} is already used by inputs[{seen[ident]}]"
                )
            )
        seen.setdefault(ident, i)
        prompt = _fill(item["prompt"], item.get("vars", {}), loc, ("inputs", i), problems)
        refs = []
        for j, f in enumerate(item.get("files", [])):
            ref = _file(f, base, tools, loc, ("inputs", i, "files", j), problems)
            if ref is not None:
                refs.append(ref)
        out.append(InputSpec(ident, _with_files(prompt, refs), tuple(refs)))
    return out


def _fill(prompt: str, values: dict[str, Any], loc: Located, at: tuple, problems: list[str]) -> str:
    """`{name}` placeholders filled from `vars` (`{{` and `}}` for literal braces)."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(prompt) if f is not None]
    except ValueError as err:
        problems.append(
            loc.problem((*at, "prompt"), f"bad placeholder: {err} (write {{{{ and }}}} for braces)")
        )
        return prompt
    bad = [f for f in fields if not f.isidentifier()]
    missing = sorted({f for f in fields if f.isidentifier() and f not in values})
    if bad:
        problems.append(
            loc.problem((*at, "prompt"), f"placeholder {{{bad[0]}}} is not a plain name")
        )
    if missing:
        problems.append(
            loc.problem((*at, "prompt"), f"placeholder {{{missing[0]}}} has no value in `vars`")
        )
    if bad or missing:
        return prompt
    return prompt.format_map({k: str(v) for k, v in values.items()})


def _file(
    raw: Any, base: Path, tools: ToolsSpec, loc: Located, at: tuple, problems: list[str]
) -> FileRef | None:
    rel = raw if isinstance(raw, str) else raw["path"]
    mode = "include" if isinstance(raw, str) else raw.get("mode", "include")
    path = (base / rel).resolve()
    if not path.is_file():
        problems.append(
            loc.problem(at, f"file {rel!r} does not exist (paths are relative to the task file)")
        )
        return None
    if mode == "expose":
        if not path.is_relative_to(tools.workspace):
            problems.append(loc.problem(at, f"file {rel!r} is exposed but outside tools.workspace"))
            return None
        if not set(FILE_TOOLS) & set(tools.enabled):
            problems.append(
                loc.problem(
                    at,
                    f"file {rel!r} is exposed but no file tool is enabled ({', '.join(FILE_TOOLS)})",
                )
            )
        return FileRef(path, mode, path.relative_to(tools.workspace).as_posix())
    if path.stat().st_size > MAX_INCLUDE_BYTES:
        problems.append(
            loc.problem(
                at,
                f"file {rel!r} is larger than {MAX_INCLUDE_BYTES} bytes; expose it to the tools instead",
            )
        )
        return None
    try:
        path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        problems.append(loc.problem(at, f"file {rel!r} is not UTF-8 text"))
        return None
    return FileRef(path, mode, rel)


def _with_files(prompt: str, refs: list[FileRef]) -> str:
    """The prompt with included files appended and exposed ones named."""
    parts = [prompt]
    for ref in refs:
        if ref.mode == "include":
            parts.append(f"--- {ref.shown_as} ---\n{ref.path.read_text(encoding='utf-8').rstrip()}")
    exposed = [ref.shown_as for ref in refs if ref.mode == "expose"]
    if exposed:
        parts.append("Files you can read with the tools: " + ", ".join(exposed))
    return "\n\n".join(parts)


__all__ = [
    "BUILTIN_TOOLS",
    "FileRef",
    "InputSpec",
    "SessionSpec",
    "TaskSpec",
    "ToolsSpec",
    "load_task",
    "model_problem",
]
