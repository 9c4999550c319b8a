"""Repository layout (DESIGN §1), the `agentrt.*` namespace mapping, and wheel installs."""

from __future__ import annotations

import fnmatch
import importlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

from agentrt import __version__

REPO = Path(__file__).resolve().parents[1]
DESIGN_TOP_LEVEL = {
    "agentrt",
    "dms",
    "kernels",
    "tools",
    "sessions",
    "tests",
    "examples",
    "pyproject.toml",
    "README.md",
}
ALSO_ALLOWED = {"docs", ".ci"}  # plus any dotfile (.gitignore, .git, ...)
BARE_NAMES = ("dms", "kernels", "tools", "sessions")
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
PACKAGE_DIR: dict[str, str] = SETUPTOOLS["package-dir"]


def source_files() -> list[str]:
    """Repository files a clean clone would have: tracked or untracked, never ignored."""
    try:
        proc = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
    except (OSError, subprocess.CalledProcessError):
        return _walk_without_ignored()
    return sorted(p for p in proc.stdout.split("\0") if p and (REPO / p).is_file())


def _walk_without_ignored() -> list[str]:
    """Fallback outside a git checkout: every file, minus the .gitignore name patterns."""
    patterns = [".git"]
    gitignore = REPO / ".gitignore"
    if gitignore.is_file():
        lines = gitignore.read_text(encoding="utf-8").splitlines()
        patterns += [ln.strip().rstrip("/") for ln in lines if ln.strip() and ln[0] != "#"]
    found = []
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if not any(fnmatch.fnmatch(d, p) for p in patterns)]
        for name in files:
            if not any(fnmatch.fnmatch(name, p) for p in patterns):
                found.append(str((Path(root) / name).relative_to(REPO)))
    return sorted(found)


def folder_of(package: str) -> Path:
    """The folder a package name maps to through [tool.setuptools.package-dir]."""
    parts = package.split(".")
    for i in range(len(parts), 0, -1):
        prefix = ".".join(parts[:i])
        if prefix in PACKAGE_DIR:
            return REPO / PACKAGE_DIR[prefix] / Path(*parts[i:])
    return REPO / Path(*parts)


def installed_name(source: str) -> str:
    """Where a repository file lands in an install (`kernels/x.py` -> `agentrt/kernels/x.py`)."""
    top, _, rest = source.partition("/")
    return source if top == "agentrt" else f"agentrt/{top}/{rest}"


def test_top_level_is_exactly_the_design_layout() -> None:
    top = {path.split("/")[0] for path in source_files()}
    extra = {name for name in top - DESIGN_TOP_LEVEL - ALSO_ALLOWED if not name.startswith(".")}
    assert not extra, f"not in DESIGN §1: {sorted(extra)}"
    missing = DESIGN_TOP_LEVEL - top
    assert not missing, f"DESIGN §1 entries missing (or empty): {sorted(missing)}"


def test_package_dir_maps_the_namespace_onto_the_top_level_folders() -> None:
    for name in BARE_NAMES:
        assert folder_of(f"agentrt.{name}") == REPO / name


def test_every_package_folder_is_listed_in_pyproject() -> None:
    packages = SETUPTOOLS.get("packages")
    if not isinstance(packages, list):
        pytest.skip("packages are discovered, not listed")
    inits = [p for p in source_files() if p.endswith("/__init__.py") and not p.startswith("tests/")]
    expected = {installed_name(p).rsplit("/", 1)[0].replace("/", ".") for p in inits}
    assert expected - set(packages) == set(), "add these to [tool.setuptools] packages"
    assert set(packages) - expected == set(), "listed packages without an __init__.py"


@pytest.mark.parametrize("package", sorted(PACKAGE_DIR))
def test_namespace_package_imports_from_its_folder(package: str) -> None:
    module = importlib.import_module(package)
    assert module.__file__ is not None
    assert Path(module.__file__).resolve().parent == folder_of(package).resolve()


def _bare_import(name: str, python: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`import name` in a fresh interpreter started in cwd, without PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = f"import {name}; print({name}.__file__)"
    return subprocess.run(
        [python, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def _assert_bare_import_fails(name: str, python: str, cwd: Path) -> None:
    """A bare top-level name must not import; `kernels` may only be Hugging Face's package."""
    proc = _bare_import(name, python, cwd)
    if proc.returncode == 0 and name == "kernels":
        # HF's `kernels` is installed (maybe in a venv inside the repository): fine, as long
        # as it is not our top-level folder.
        found = Path(proc.stdout.strip().splitlines()[-1]).resolve()
        assert not found.is_relative_to((REPO / name).resolve()), proc.stdout
        return
    assert proc.returncode != 0, f"`import {name}` worked: {proc.stdout}"
    assert f"No module named '{name}'" in proc.stderr, proc.stderr


@pytest.mark.parametrize("name", BARE_NAMES)
def test_bare_top_level_names_do_not_import(name: str, tmp_path: Path) -> None:
    _assert_bare_import_fails(name, sys.executable, tmp_path)


def test_readme_commands_are_what_ci_runs() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / ".ci" / "readme_commands.py")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    install, test = proc.stdout.splitlines()
    steps = [s.strip() for s in install.split("&&")]
    assert steps[:2] == ["python3 -m venv .venv", ". .venv/bin/activate"], steps
    assert test.startswith(". .venv/bin/activate && pytest"), test
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    # .ci/run runs both lines as written (no copy of them that could drift), in order.
    assert "python3 .ci/readme_commands.py" in ci
    first, second = ci.index('"${readme[0]}"'), ci.index('"${readme[1]}"')
    assert first < ci.index("ruff check .") < second


def _training_state(path: str) -> bool:
    """Adapter training states kept in the repository between sessions (`training/`,
    `training-lora/`, ...): not shipped."""
    return fnmatch.fnmatch(path, "agentrt/data/adapters/*/training*/*")


# --- wheel installs (slow) ---------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built, without network, from a copy of the clean-clone files."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    for rel in source_files():
        if rel.startswith((".git/", "tests/")):
            continue
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, src / rel)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    cmd += ["--no-index", "-q", str(src), "-w", str(root / "dist")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (built,) = (root / "dist").glob("agentrt-*.whl")
    return built


@pytest.mark.slow
def test_wheel_holds_the_namespace_and_nothing_at_top_level(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in BARE_NAMES:
        assert f"agentrt/{name}/__init__.py" in names
    assert "agentrt/cli/main.py" in names
    top = {name.split("/")[0] for name in names}
    assert top == {"agentrt", f"agentrt-{__version__}.dist-info"}, sorted(top)
    package_roots = ("agentrt/", *(f"{name}/" for name in BARE_NAMES))
    shipped = {
        installed_name(p)
        for p in source_files()
        if p.startswith(package_roots)
        and not p.endswith((".md", ".pyc"))
        and not _training_state(p)
    }
    missing = sorted(shipped - names)
    assert not missing, f"in the source tree but not in the wheel (package-data?): {missing}"


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # The runtime dependencies (torch, ...) come from this environment's site-packages,
    # added as plain paths: their .pth hooks, the editable agentrt finder included, stay off.
    deps = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    (Path(site) / "_test_runtime_deps.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q"]
    proc = subprocess.run([*pip, "--target", site, str(wheel)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    modules = ["agentrt", *(f"agentrt.{name}" for name in BARE_NAMES)]
    code = (
        f"import json, sys, {', '.join(modules)}; from agentrt import __version__; "
        f"print(json.dumps([__version__, {{m: sys.modules[m].__file__ for m in {modules!r}}}]))"
    )
    run = subprocess.run(
        [python, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    version, files = json.loads(run.stdout.splitlines()[-1])
    assert version == importlib.metadata.version("agentrt")
    for module, file in files.items():
        assert Path(file).is_relative_to(site), f"{module} imported from {file}, not the wheel"
    for name in BARE_NAMES:
        _assert_bare_import_fails(name, python, tmp_path)
