"""`agentrt doctor`: report the environment and whether agentrt is usable here.

Usable means: torch and transformers 5.x import, the home folder is writable (or can be
created), and the metadata database is reachable (or can be created). Everything else
is reported but does not fail. Without `--fix` the doctor changes nothing on disk.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from agentrt import __version__
from agentrt.cli.options import resolve_settings, setting_source, settings_options
from agentrt.errors import AgentRTError, ConfigError, DatabaseError
from agentrt.settings import Settings

_FIX_HINT = "run `agentrt doctor --fix` to create it and apply the migrations"


@dataclass(frozen=True)
class Check:
    """One line of the report; a `fail` makes agentrt unusable and raises `error`."""

    name: str
    status: str  # "ok" | "warn" | "fail" | "info"
    summary: str
    data: dict[str, Any] = field(default_factory=dict)
    hint: str | None = None
    error: type[AgentRTError] = AgentRTError


def _gib(n_bytes: int) -> str:
    """Format a byte count with one decimal (the project's one byte formatter)."""
    from agentrt.dms.budget import format_bytes

    return format_bytes(n_bytes, digits=1)


def _describe_gpu(gpu: dict[str, Any]) -> str:
    """One GPU as `cuda:0 NAME, 79.1 GiB, sm_90`."""
    sm = gpu["capability"].replace(".", "")
    return f"cuda:{gpu['index']} {gpu['name']}, {_gib(gpu['memory_bytes'])}, sm_{sm}"


def _dist_version(name: str) -> str | None:
    """Installed version of distribution `name`, or None when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _creatable(path: Path) -> tuple[bool, str]:
    """Whether folder `path` exists writable or could be created; the reason when not."""
    if path.exists():
        if not path.is_dir():
            return False, f"{path} exists and is not a folder"
        if not os.access(path, os.W_OK | os.X_OK):
            return False, f"{path} is not writable"
        return True, "exists"
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return False, f"cannot create {path}: {ancestor} is not a folder"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return False, f"cannot create {path}: {ancestor} is not writable"
    try:  # access() is not the whole truth (read-only mounts, /proc): try a folder and undo it
        os.rmdir(tempfile.mkdtemp(prefix=".agentrt-probe-", dir=ancestor))
    except OSError as err:
        return False, f"cannot create {path}: {err.strerror or err} in {ancestor}"
    return True, "missing"


def check_python() -> Check:
    """Python version and interpreter."""
    version = platform.python_version()
    data = {"version": version, "executable": sys.executable}
    return Check("python", "ok", f"{version} ({sys.executable})", data)


def check_torch() -> list[Check]:
    """torch version and CUDA, then one line for the GPUs."""
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - any import failure means "not usable"
        hint = "pip install torch==2.13.0 (CPU) or the CUDA build for your GPU"
        return [
            Check("torch", "fail", f"cannot import torch ({exc})", {"version": None}, hint),
            Check("gpu", "info", "unknown (torch is missing)", {"cuda_available": False}),
        ]
    cuda = bool(torch.cuda.is_available())
    torch_data: dict[str, Any] = {
        "version": torch.__version__,
        "cuda_available": cuda,
        "cuda_version": torch.version.cuda,
    }
    cuda_text = f"CUDA {torch.version.cuda} available" if cuda else "CUDA not available"
    gpus = []
    if cuda:
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            gpus.append(
                {
                    "index": index,
                    "name": props.name,
                    "memory_bytes": int(props.total_memory),
                    "capability": f"{props.major}.{props.minor}",
                }
            )
    gpu_text = "; ".join(_describe_gpu(g) for g in gpus)
    return [
        Check("torch", "ok", f"{torch.__version__}, {cuda_text}", torch_data),
        Check(
            "gpu",
            "ok" if gpus else "info",
            gpu_text or "none (CPU only)",
            {"cuda_available": cuda, "gpus": gpus},
        ),
    ]


def check_triton(cuda: bool) -> Check:
    """triton version, or absent (only GPU kernels need it)."""
    version = _dist_version("triton")
    if version is not None:
        return Check("triton", "ok", version, {"version": version})
    if cuda:
        return Check(
            "triton",
            "warn",
            "not installed: GPU kernels unavailable, the torch references run instead",
            {"version": None},
            "pip install triton",
        )
    return Check("triton", "info", "not installed (only GPU kernels need it)", {"version": None})


def check_transformers() -> Check:
    """transformers must import and be 5.x."""
    hint = "pip install 'transformers>=5,<6'"
    try:
        import transformers
    except Exception as exc:  # noqa: BLE001 - any import failure means "not usable"
        return Check("transformers", "fail", f"cannot import ({exc})", {"version": None}, hint)
    version = transformers.__version__
    data = {"version": version}
    if version.split(".", 1)[0] != "5":
        return Check("transformers", "fail", f"{version} found, agentrt needs 5.x", data, hint)
    return Check("transformers", "ok", version, data)


def check_home(settings: Settings, source: str) -> Check:
    """The state folder: exists and writable, or creatable; never created here."""
    home = settings.home
    data: dict[str, Any] = {"path": str(home), "source": source, "exists": home.exists()}
    ok, why = _creatable(home)
    if not ok:
        return Check(
            "home",
            "fail",
            f"{home} ({source}): {why}",
            data,
            "set AGENTRT_HOME (or --home) to a writable folder",
            ConfigError,
        )
    if why == "missing":
        summary = f"{home} ({source}): not created yet, created on first use"
        return Check("home", "ok", summary, data)
    mode = home.stat().st_mode & 0o777
    data["mode"] = f"{mode:04o}"
    if mode & 0o077:
        summary = f"{home} ({source}): writable, but mode {mode:04o} lets others read it"
        return Check("home", "warn", summary, data, f"chmod 700 {home}")
    return Check("home", "ok", f"{home} ({source}): writable", data)


def check_database(settings: Settings, source: str) -> Check:
    """The metadata database: reachable (or creatable) and at the newest migration."""
    try:
        from agentrt.sessions.database import database_status, sqlite_path
    except ImportError as exc:
        summary = f"cannot check the database: {exc}"
        return Check(
            "database",
            "fail",
            summary,
            {"source": source},
            "reinstall agentrt with its dependencies",
        )
    status = database_status(settings.db_url)
    shown = status.url_redacted
    data: dict[str, Any] = {
        "url": shown,
        "source": source,
        "reachable": status.reachable,
        "revision": status.revision,
        "head": status.head,
        "up_to_date": status.up_to_date,
    }
    if not status.reachable or status.error:
        # status.error may carry the hint of the AgentRTError it came from.
        error, _, hint = (status.error or "unknown error").partition("\n  hint: ")
        if not hint:
            hint = (
                "upgrade agentrt, or point AGENTRT_DB (or --db) at another database"
                if status.reachable
                else "point AGENTRT_DB (or --db) at a reachable database or a writable folder"
            )
        return Check("database", "fail", f"{shown}: {error}", data, hint, DatabaseError)
    path = sqlite_path(settings.db_url)
    if path is not None and not path.exists():
        return Check("database", "ok", f"{shown}: not created yet, created on first use", data)
    if not status.up_to_date:
        summary = f"{shown}: reachable, schema {status.revision or '(empty)'}, head {status.head}"
        return Check("database", "warn", summary, data, _FIX_HINT)
    return Check("database", "ok", f"{shown}: reachable, schema at head {status.head}", data)


def check_default_model(settings: Settings) -> Check:
    """The default model's state: prepared (where, how big, dense or DMS), or where it would come from."""
    from agentrt.models.catalog import model_info
    from agentrt.models.registry import DEFAULT_MODEL

    info = model_info(DEFAULT_MODEL, settings.home)
    data = info.to_dict()
    if info.prepared:
        size = (info.bytes or 0) / 2**20
        summary = f"{info.name}: prepared ({info.path}, {size:.0f} MiB, {info.flavour})"
        return Check("default model", "ok", summary, data)
    summary = f"{info.name}: not prepared yet; GGUF from {info.source}"
    return Check("default model", "info", summary, data)


def check_defaults(settings: Settings, cuda: bool) -> list[Check]:
    """The default model and device; a CUDA device without CUDA is a configuration error."""
    model = Check("model", "info", settings.model, {"model": settings.model})
    device = settings.device
    resolved = ("cuda" if cuda else "cpu") if device == "auto" else device
    data = {"device": device, "resolved": resolved}
    if resolved.startswith("cuda") and not cuda:
        hint = "set AGENTRT_DEVICE=cpu (or --device cpu), or install a CUDA build of torch"
        dev = Check("device", "fail", f"{device}: CUDA is not available", data, hint, ConfigError)
    else:
        dev = Check("device", "ok", device if device == resolved else f"auto -> {resolved}", data)
    return [model, dev]


def run_checks(settings: Settings, sources: dict[str, str]) -> list[Check]:
    """Every check of the report, in display order."""
    torch_checks = check_torch()
    cuda = bool(torch_checks[1].data.get("cuda_available"))
    return [
        check_python(),
        *torch_checks,
        check_triton(cuda),
        check_transformers(),
        check_home(settings, sources["home"]),
        check_database(settings, sources["db"]),
        check_default_model(settings),
        *check_defaults(settings, cuda),
    ]


def apply_fixes(settings: Settings) -> list[str]:
    """Create the home folder (mode 0700) and migrate a reachable database to the newest schema."""
    from agentrt.sessions.database import database_status, upgrade

    done: list[str] = []
    home = settings.home
    creatable, why = _creatable(home)
    if not creatable:
        raise ConfigError(
            f"--fix cannot use the home folder: {why}",
            hint="set AGENTRT_HOME (or --home) to a writable folder",
        )
    if not home.exists():
        from agentrt.sessions.atomic import ensure_private_dir

        try:  # the home and any parents it creates: 0700, whatever the umask
            ensure_private_dir(home)
        except OSError as err:
            raise ConfigError(
                f"cannot create the home folder {home}: {err.strerror or err}",
                hint="set AGENTRT_HOME (or --home) to a writable folder",
            ) from None
        done.append(f"created {home} (mode 0700)")
    status = database_status(settings.db_url)
    if status.reachable and not status.error and not status.up_to_date:
        revision = upgrade(settings.db_url)
        done.append(f"migrated {status.url_redacted} to schema {revision}")
    return done


def render_table(checks: list[Check]) -> str:
    """The report as plain aligned text: check, status, details, then the hints."""
    width = max(len(c.name) for c in checks)
    lines = [f"agentrt {__version__} doctor", ""]
    for c in checks:
        label = "FAIL" if c.status == "fail" else c.status
        lines.append(f"  {c.name:<{width}}  {label:<4}  {c.summary}")
    hints = [c for c in checks if c.hint and c.status in ("warn", "fail")]
    if hints:
        lines.append("")
        lines.extend(f"  hint ({c.name}): {c.hint}" for c in hints)
    return "\n".join(lines)


def to_json(checks: list[Check], fixed: list[str]) -> str:
    """The report for machines: every check's status, summary and raw values."""
    problems = [c for c in checks if c.status == "fail"]
    payload = {
        "agentrt": __version__,
        "usable": not problems,
        "checks": {
            c.name.replace(" ", "_"): {"status": c.status, "summary": c.summary, **c.data}
            for c in checks
        },
        "problems": [
            {
                "check": c.name.replace(" ", "_"),
                "message": c.summary,
                "hint": c.hint,
                "exit_code": c.error.exit_code,
            }
            for c in problems
        ],
        "fixed": fixed,
    }
    return json.dumps(payload, indent=2)


@click.command(short_help="Report whether agentrt is usable here.")
@settings_options
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--fix", is_flag=True, help="Create the home folder (mode 0700) and migrate the database."
)
@click.pass_context
def doctor(ctx: click.Context, as_json: bool, fix: bool, **_options: str | None) -> None:
    """Check Python, torch, triton, transformers, home, database and the default model."""
    settings = resolve_settings(ctx)
    sources = {name: setting_source(ctx, name) for name in ("home", "db")}
    fixed = apply_fixes(settings) if fix else []
    checks = run_checks(settings, sources)
    problems = [c for c in checks if c.status == "fail"]
    quiet = (ctx.find_root().obj or {}).get("verbosity", 0) < 0
    if as_json:
        click.echo(to_json(checks, fixed))
    elif not quiet:
        for line in fixed:
            click.echo(f"fixed: {line}")
        click.echo(render_table(checks))
        click.echo("")
        click.echo("agentrt is NOT usable here." if problems else "agentrt is usable here.")
    if problems:
        first = problems[0]
        if len(problems) == 1:
            message = first.summary
        else:
            message = "; ".join(f"{c.name}: {c.summary}" for c in problems)
        raise first.error(message, hint=first.hint)
