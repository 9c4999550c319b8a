"""The retrofit corpus script: deterministic output, split by document, manifest, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentrt.dms.retrofit.data import prepare_data
from agentrt.models import corpus as corpus_mod
from agentrt.models.corpus import Source, build_corpus, is_heldout, main
from tests.dms.test_retrofit import corpus, make_tokenizer


@pytest.fixture()
def sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Two fake package trees registered as the known sources."""
    docs = corpus(60, seed=4)
    root = tmp_path / "pkg"
    for i, text in enumerate(docs):
        sub = root / ("doc" if i % 2 else "src") / f"d{i:02d}.txt"
        sub.parent.mkdir(parents=True, exist_ok=True)
        sub.write_text(text + "\r\n")
    known = {
        "doc": Source("doc", root / "doc", "*.txt", "fake-doc", "MIT"),
        "src": Source("src", root / "src", "*.txt", "fake-src", "MIT"),
        "absent": Source("absent", root / "nope", "*.txt", "python3-doc", "PSF-2.0"),
    }
    monkeypatch.setattr(corpus_mod, "default_sources", lambda: known)
    return root


def test_build_is_deterministic_and_split_by_document(sources: Path, tmp_path: Path) -> None:
    a = build_corpus(tmp_path / "a", sources=["doc", "src"], heldout_percent=20, min_chars=10)
    b = build_corpus(tmp_path / "b", sources=["doc", "src"], heldout_percent=20, min_chars=10)
    assert a["files"] == b["files"], "same sources, same bytes"
    docs = a["documents"]
    assert [d["id"] for d in docs] == sorted(d["id"] for d in docs)
    held = {d["id"] for d in docs if d["split"] == "heldout"}
    assert 0 < len(held) < len(docs)
    assert all(is_heldout(i, 20) == (i in held) for i in (d["id"] for d in docs))
    train_lines = (tmp_path / "a" / "train.jsonl").read_text().splitlines()
    assert len(train_lines) == len(docs) - len(held)
    assert "\r" not in json.loads(train_lines[0])["text"]
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert [s["package"] for s in manifest["sources"]] == ["fake-doc", "fake-src"]
    assert all(len(d["sha256"]) == 64 for d in manifest["documents"])
    # Dropping a source leaves every other document's split unchanged.
    c = build_corpus(tmp_path / "c", sources=["doc"], heldout_percent=20, min_chars=10)
    assert {d["id"] for d in c["documents"] if d["split"] == "heldout"} <= held


def test_output_feeds_the_retrofit_data_reader(sources: Path, tmp_path: Path) -> None:
    build_corpus(tmp_path / "c", sources=["doc", "src"], heldout_percent=20, min_chars=10)
    tok = make_tokenizer(corpus())
    data = prepare_data(
        [str(tmp_path / "c" / "train.jsonl")],
        tok,
        seq_len=32,
        eval_fraction=0.1,
        seed=0,
        heldout=[str(tmp_path / "c" / "heldout.jsonl")],
    )
    assert data.train.shape[0] > 10 and data.heldout.shape[0] >= 1


def test_missing_source_names_the_package(sources: Path, tmp_path: Path, capsys) -> None:
    code = main(["--out", str(tmp_path / "o"), "--sources", "doc,absent"])
    assert code == 6
    assert "apt-get install -y python3-doc" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "o"), "--sources", "bogus"]) == 2
