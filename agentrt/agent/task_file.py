"""Reading a task file: YAML with the line of every key, `--set` overrides, JSON Schema checks.

Every problem names its key (dotted, `inputs[0].prompt`) and its line; all problems of a
file are reported together in one `TaskFileError`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agentrt.errors import TaskFileError

KeyPath = tuple[str | int, ...]
SCHEMA_FILE = Path(__file__).with_name("task_schema.json")
SET_LINE = -1  # the "line" of a key given with --set


@functools.lru_cache(maxsize=1)
def task_schema() -> dict[str, Any]:
    """The task file's JSON Schema (agentrt/agent/task_schema.json)."""
    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


def dotted(path: KeyPath) -> str:
    """`("inputs", 0, "prompt")` → `inputs[0].prompt` (`(top level)` for the root)."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


class Located:
    """A task file's values and where each key stands: `where(path)` → 'line N' text."""

    def __init__(self, source: str, values: Any, lines: dict[KeyPath, int]) -> None:
        self.source = source
        self.values = values
        self.lines = lines

    def line(self, path: KeyPath) -> int | None:
        """The line of `path`, else of its nearest ancestor that has one."""
        for cut in range(len(path), -1, -1):
            if path[:cut] in self.lines:
                return self.lines[path[:cut]]
        return None

    def problem(self, path: KeyPath, message: str) -> str:
        """`file line N: key: message` (or `(--set) key: ...` for overrides)."""
        line = self.line(path)
        if line == SET_LINE:
            return f"--set {dotted(path)}: {message}"
        at = f"{self.source} line {line}" if line is not None else self.source
        return f"{at}: {dotted(path)}: {message}"


def _walk(
    node: Any, path: KeyPath, lines: dict[KeyPath, int], problems: list[str], source: str
) -> Any:
    """The plain value of a composed YAML node, recording lines and refusing odd keys."""
    import yaml

    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for knode, vnode in node.value:
            line = knode.start_mark.line + 1
            where = f"{source} line {line}: {dotted(path)}"
            if not isinstance(knode, yaml.ScalarNode) or knode.tag != "tag:yaml.org,2002:str":
                if knode.tag == "tag:yaml.org,2002:merge":
                    problems.append(
                        f"{where}: YAML merge keys (<<) are not supported in task files"
                    )
                else:
                    problems.append(f"{where}: key {knode.value!r:.40} must be a plain string")
                continue
            key = str(knode.value)
            if key in out:
                problems.append(f"{where}: key {key!r} appears twice")
                continue
            lines[(*path, key)] = line
            out[key] = _walk(vnode, (*path, key), lines, problems, source)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_walk(v, (*path, i), lines, problems, source) for i, v in enumerate(node.value)]
    return _scalar(node)


def _scalar(node: Any) -> Any:
    """A YAML scalar node's value, constructed as `yaml.safe_load` would."""
    import yaml

    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


def read_task_yaml(path: Path) -> Located:
    """Parse a task file: its values, the line of each key; TaskFileError for bad YAML."""
    import yaml

    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TaskFileError(f"task file {source} does not exist", hint="check the path") from None
    except (OSError, UnicodeDecodeError) as err:
        raise TaskFileError(f"cannot read task file {source}: {err}") from err
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise TaskFileError(f"{source}{at}: invalid YAML: {problem}") from None
    except (ValueError, RecursionError) as err:  # e.g. NUL characters, absurd nesting
        raise TaskFileError(f"{source}: invalid YAML: {err}") from None
    if node is None:
        raise TaskFileError(
            f"{source}: the task file is empty",
            hint="a task file needs at least `inputs:` (see docs/AGENT.md)",
        )
    problems: list[str] = []
    lines: dict[KeyPath, int] = {}
    try:
        values = _walk(node, (), lines, problems, source)
    except yaml.YAMLError as err:  # a scalar that cannot be constructed (bad !!tag, timestamp)
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        at = f" line {mark.line + 1}" if mark else ""
        raise TaskFileError(f"{source}{at}: invalid YAML value: {err}") from None
    except (ValueError, OverflowError, RecursionError) as err:
        raise TaskFileError(f"{source}: invalid YAML value: {err}") from None
    if problems:
        raise TaskFileError("\n".join(problems))
    if not isinstance(values, dict):
        raise TaskFileError(
            f"{source} line {node.start_mark.line + 1}: the top level must be a mapping of key: value",
            hint="see docs/AGENT.md for the task file keys",
        )
    return Located(source, values, lines)


def parse_set(item: str) -> tuple[KeyPath, Any]:
    """`generation.max_new_tokens=64` → (("generation", "max_new_tokens"), 64); YAML values."""
    import yaml

    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise TaskFileError(
            f"--set {item!r}: expected KEY=VALUE, e.g. generation.max_new_tokens=64"
        )
    parts: list[str | int] = []
    for part in key.strip().split("."):
        if not part:
            raise TaskFileError(f"--set {item!r}: empty part in the key {key!r}")
        parts.append(int(part) if part.isdigit() else part)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return tuple(parts), value


def apply_sets(located: Located, sets: list[str]) -> None:
    """Apply `--set` overrides in place (creating mappings on the way); lines become SET_LINE."""
    for item in sets:
        path, value = parse_set(item)
        node: Any = located.values
        for i, part in enumerate(path[:-1]):
            nxt = path[i + 1]
            if isinstance(part, int):
                if not isinstance(node, list) or not 0 <= part < len(node):
                    raise TaskFileError(f"--set {item!r}: {dotted(path[: i + 1])} does not exist")
                node = node[part]
                continue
            if not isinstance(node, dict):
                raise TaskFileError(f"--set {item!r}: {dotted(path[:i])} is not a mapping")
            if part not in node or node[part] is None:
                node[part] = [] if isinstance(nxt, int) else {}
            node = node[part]
        last = path[-1]
        if isinstance(last, int):
            if not isinstance(node, list) or not 0 <= last < len(node):
                raise TaskFileError(f"--set {item!r}: {dotted(path)} does not exist")
        elif not isinstance(node, dict):
            raise TaskFileError(f"--set {item!r}: {dotted(path[:-1])} is not a mapping")
        node[last] = value
        for k in [k for k in located.lines if k[: len(path)] == path]:
            del located.lines[k]
        located.lines[path] = SET_LINE


def _message(error: Any) -> tuple[KeyPath, str]:
    """One jsonschema error as (path of the offending key, plain message)."""
    from jsonschema.exceptions import best_match

    path: KeyPath = tuple(error.absolute_path)
    kind, value, inst = error.validator, error.validator_value, error.instance
    if kind == "additionalProperties" and isinstance(inst, dict):
        known = sorted(error.schema.get("properties", {}))
        extra = [k for k in inst if k not in error.schema.get("properties", {})]
        hint = f"; known keys: {', '.join(known)}" if known else ""
        return (*path, extra[0]) if extra else path, f"unknown key{hint}"
    if kind == "required":
        missing = [k for k in value if isinstance(inst, dict) and k not in inst]
        return path, f"missing required key {', '.join(repr(k) for k in missing)}"
    if kind == "type":
        want = value if isinstance(value, str) else " or ".join(value)
        return path, f"expected {want}, got {_show(inst)}"
    if kind == "enum":
        return path, f"must be one of {', '.join(repr(v) for v in value)}, got {_show(inst)}"
    if kind == "pattern":
        return path, f"{_show(inst)} does not match {value!r}"
    if kind in ("oneOf", "anyOf"):
        desc = error.schema.get("description")
        sub = best_match(error.context) if error.context else None
        detail = f" ({_message(sub)[1]})" if sub is not None else ""
        return path, f"{_show(inst)} is not allowed here{detail}" + (f"; {desc}" if desc else "")
    if kind == "propertyNames":
        return path, f"name {_show(inst)} is not allowed (use letters, digits and _)"
    return path, error.message


def _show(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'…' if len(text) > 40 else ''}"


def schema_problems(located: Located) -> list[str]:
    """Every schema violation of the task file, each naming its key and line, in line order."""
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(task_schema())
    found: list[tuple[int, str]] = []
    for error in validator.iter_errors(located.values):
        path, message = _message(error)
        found.append((located.line(path) or 0, located.problem(path, message)))
    return [m for _, m in sorted(set(found))]


def get(values: Mapping[str, Any], *keys: str, default: Any = None) -> Any:
    """values[k1][k2]... or `default` when a level is missing."""
    node: Any = values
    for key in keys:
        if not isinstance(node, Mapping) or key not in node:
            return default
        node = node[key]
    return node


__all__ = [
    "KeyPath",
    "Located",
    "apply_sets",
    "dotted",
    "get",
    "parse_set",
    "read_task_yaml",
    "schema_problems",
    "task_schema",
]
