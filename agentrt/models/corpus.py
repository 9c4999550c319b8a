"""The DMS retrofit corpus: real text from Debian packages, split by document, reproducibly.

    python -m agentrt.models.corpus --out corpus/ --model PATH_TO_MODEL [--chat 120]

Sources (each document one JSONL record `{"text": ...}`):
- `python-doc`: the reStructuredText sources of Python's documentation
  (`/usr/share/doc/python3/html/_sources/**/*.rst.txt`, package `python3-doc`, PSF-2.0);
- `python-stdlib`: the standard library's top-level modules (`/usr/lib/python3.X/*.py`,
  package `libpython3.X-stdlib`, PSF-2.0);
- `licenses`: the license texts in `/usr/share/common-licenses` (package `base-files`;
  each text permits verbatim copies).
Documents are read in sorted order; a document is held out when the sha256 of its id
(`source/relative/path`) falls in the lowest `--heldout-percent` (so the split never
changes when other documents come or go). Optional chat turns (`--chat N`) are answers the
model itself writes about excerpts of training documents (greedy, on the CPU), cached in
`chat.jsonl` and reused when the same excerpts are asked again.

Output: train.jsonl, heldout.jsonl, chat.jsonl (optional), manifest.json (sources,
package versions, licenses, per-document sha256, split and token counts).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentrt.errors import AgentRTError, ConfigError, TaskFileError

PY = f"{sys.version_info.major}.{sys.version_info.minor}"


class CorpusSourceError(TaskFileError):
    """A corpus source is not installed on this machine."""


@dataclass(frozen=True)
class Source:
    """One kind of document: where it lives, which package ships it, its license."""

    name: str
    root: Path
    pattern: str
    package: str
    license: str

    def files(self) -> list[Path]:
        """The source's files, sorted by relative path; CorpusSourceError when missing."""
        found = sorted(p for p in self.root.glob(self.pattern) if p.is_file())
        if not found:
            raise CorpusSourceError(
                f"corpus source {self.name!r}: no files match {self.root}/{self.pattern}",
                hint=f"install the package: apt-get install -y {self.package}",
            )
        return found


def default_sources() -> dict[str, Source]:
    """The sources this script knows, by name."""
    return {
        "python-doc": Source(
            "python-doc",
            Path("/usr/share/doc/python3/html/_sources"),
            "**/*.rst.txt",
            "python3-doc",
            "PSF-2.0 (Python documentation license)",
        ),
        "python-stdlib": Source(
            "python-stdlib",
            Path(f"/usr/lib/python{PY}"),
            "*.py",
            f"libpython{PY}-stdlib",
            "PSF-2.0",
        ),
        "licenses": Source(
            "licenses",
            Path("/usr/share/common-licenses"),
            "*",
            "base-files",
            "each license text permits verbatim copies",
        ),
    }


def package_version(package: str) -> str | None:
    """The installed Debian version of `package` (None when dpkg does not know it)."""
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return None
    return out.stdout.strip() or None


def is_heldout(doc_id: str, percent: float) -> bool:
    """Held out iff the first 4 bytes of sha256(doc_id), as a fraction, are below percent/100."""
    head = int(hashlib.sha256(doc_id.encode()).hexdigest()[:8], 16)
    return head / 0x1_0000_0000 < percent / 100


def clean_text(raw: bytes) -> str:
    """UTF-8 text (undecodable bytes replaced), Unix newlines, trailing space stripped."""
    text = raw.decode("utf-8", errors="replace").replace("\r\n", "\n")
    return "\n".join(line.rstrip() for line in text.split("\n")).strip() + "\n"


def read_documents(
    sources: list[Source], min_chars: int, max_docs: int | None
) -> list[dict[str, Any]]:
    """Every document of the sources in a fixed order: id, source, text, sha256."""
    docs = []
    for source in sources:
        files = source.files()
        if max_docs is not None:
            files = files[:max_docs]
        for path in files:
            text = clean_text(path.read_bytes())
            if len(text) < min_chars:
                continue
            rel = path.relative_to(source.root).as_posix()
            docs.append(
                {
                    "id": f"{source.name}/{rel}",
                    "source": source.name,
                    "text": text,
                    "sha256": hashlib.sha256(text.encode()).hexdigest(),
                }
            )
    return docs


def excerpts(docs: list[dict[str, Any]], count: int, chars: int = 1200) -> list[dict[str, Any]]:
    """`count` excerpts of training documents for chat turns: evenly spaced, deterministic."""
    pool = [d for d in docs if d["split"] == "train" and d["source"] != "licenses"]
    if not pool or count <= 0:
        return []
    step = max(1, len(pool) // count)
    out = []
    for doc in pool[::step][:count]:
        text = doc["text"]
        start = (int(doc["sha256"][:8], 16) % max(1, len(text) - chars)) if len(text) > chars else 0
        cut = text[start : start + chars]
        cut = cut[cut.find("\n") + 1 :] if start else cut
        out.append({"doc": doc["id"], "excerpt": cut.strip()})
    return out


QUESTIONS = (
    "Explain in two or three sentences what this text is about.",
    "What is the most important point of this text? Answer briefly.",
    "Summarise this for a beginner in a few sentences.",
)


def chat_prompt(item: dict[str, Any], k: int) -> list[dict[str, str]]:
    """The user turn asking about one excerpt."""
    question = QUESTIONS[k % len(QUESTIONS)]
    return [{"role": "user", "content": f"{item['excerpt']}\n\n{question}"}]


def generate_chats(
    model_dir: str,
    items: list[dict[str, Any]],
    max_new_tokens: int,
    cache: dict[str, Any],
    cache_file: Path | None = None,
) -> list[dict[str, Any]]:
    """Answers of the model to each excerpt's question (greedy, CPU); cached by prompt hash.

    The cache is written after every new answer, so an interrupted build keeps its work.
    """
    import tempfile

    from tqdm import tqdm

    from agentrt.engine import Engine

    records = []
    engine = None
    home = tempfile.mkdtemp(prefix="agentrt-corpus-")
    try:
        for k, item in enumerate(tqdm(items, desc="chat turns", unit="answer")):
            messages = chat_prompt(item, k)
            key = hashlib.sha256(
                json.dumps([messages, max_new_tokens], sort_keys=True).encode()
            ).hexdigest()
            if key not in cache:
                if engine is None:
                    engine = Engine.from_pretrained(
                        model_dir, device="cpu", home=home, db=f"sqlite:///{home}/db.sqlite"
                    )
                tok = engine.tokenizer
                text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
                ids = list(tok(text, add_special_tokens=False)["input_ids"])
                session = engine.new_session()
                session.prefill(ids)
                answer = "".join(session.generate_text(max_new_tokens, temperature=0.0)).strip()
                session.close()
                cache[key] = answer
                if cache_file is not None:
                    cache_file.write_text(json.dumps(cache, indent=1, sort_keys=True) + "\n")
            records.append(
                {
                    "doc": item["doc"],
                    "key": key,
                    "messages": [*messages, {"role": "assistant", "content": cache[key]}],
                }
            )
    finally:
        if engine is not None:
            engine.close()
    return records


def count_tokens(model_dir: str | None, texts: list[str]) -> list[int] | None:
    """Token counts of texts with the model's tokenizer (None without a model)."""
    if not model_dir:
        return None
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    return [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> str:
    """Write records one per line; returns the file's sha256."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    path.write_text(text, encoding="utf-8")
    return hashlib.sha256(text.encode()).hexdigest()


def build_corpus(
    out: Path,
    *,
    sources: list[str],
    heldout_percent: float = 5.0,
    min_chars: int = 200,
    max_docs: int | None = None,
    model: str | None = None,
    chat: int = 0,
    chat_tokens: int = 96,
) -> dict[str, Any]:
    """Build the corpus folder; returns the manifest."""
    known = default_sources()
    unknown = [s for s in sources if s not in known]
    if unknown:
        raise ConfigError(
            f"unknown corpus source(s): {', '.join(unknown)}", hint=f"known: {', '.join(known)}"
        )
    chosen = [known[s] for s in sources]
    docs = read_documents(chosen, min_chars, max_docs)
    for doc in docs:
        doc["split"] = "heldout" if is_heldout(doc["id"], heldout_percent) else "train"
    counts = count_tokens(model, [d["text"] for d in docs])
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for split in ("train", "heldout"):
        records = [{"text": d["text"]} for d in docs if d["split"] == split]
        files[f"{split}.jsonl"] = write_jsonl(out / f"{split}.jsonl", records)
    chats: list[dict[str, Any]] = []
    if chat > 0:
        if not model:
            raise ConfigError("--chat needs --model (the model writes the answers)")
        cache_file = out / "chat_cache.json"
        cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}
        chats = generate_chats(model, excerpts(docs, chat), chat_tokens, cache, cache_file)
        cache_file.write_text(json.dumps(cache, indent=1, sort_keys=True) + "\n")
        files["chat.jsonl"] = write_jsonl(
            out / "chat.jsonl", [{"messages": c["messages"]} for c in chats]
        )
    manifest = {
        "command": "python -m agentrt.models.corpus " + " ".join(sys.argv[1:]),
        "heldout_percent": heldout_percent,
        "sources": [
            {
                "name": s.name,
                "root": str(s.root),
                "pattern": s.pattern,
                "package": s.package,
                "version": package_version(s.package),
                "license": s.license,
            }
            for s in chosen
        ],
        "files": files,
        "tokenizer": model,
        "totals": _totals(docs, counts),
        "chat": {"answers": len(chats), "max_new_tokens": chat_tokens, "model": model},
        "documents": [
            {
                "id": d["id"],
                "split": d["split"],
                "sha256": d["sha256"],
                "chars": len(d["text"]),
                **({"tokens": counts[i]} if counts else {}),
            }
            for i, d in enumerate(docs)
        ],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


def _totals(docs: list[dict[str, Any]], counts: list[int] | None) -> dict[str, Any]:
    """Documents, characters and tokens per split."""
    totals: dict[str, Any] = {}
    for split in ("train", "heldout"):
        idx = [i for i, d in enumerate(docs) if d["split"] == split]
        totals[split] = {
            "documents": len(idx),
            "chars": sum(len(docs[i]["text"]) for i in idx),
            "tokens": sum(counts[i] for i in idx) if counts else None,
        }
    return totals


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument(
        "--sources",
        default="python-doc,python-stdlib,licenses",
        help="comma-separated sources (python-doc, python-stdlib, licenses)",
    )
    parser.add_argument("--heldout-percent", type=float, default=5.0)
    parser.add_argument("--min-chars", type=int, default=200, help="skip shorter documents")
    parser.add_argument("--max-docs", type=int, default=None, help="per source (for tests)")
    parser.add_argument("--model", default=None, help="model folder: tokenizer + chat answers")
    parser.add_argument("--chat", type=int, default=0, help="chat turns the model writes (0: none)")
    parser.add_argument("--chat-tokens", type=int, default=96, help="max tokens per answer")
    args = parser.parse_args(argv)
    try:
        manifest = build_corpus(
            args.out,
            sources=[s.strip() for s in args.sources.split(",") if s.strip()],
            heldout_percent=args.heldout_percent,
            min_chars=args.min_chars,
            max_docs=args.max_docs,
            model=args.model,
            chat=args.chat,
            chat_tokens=args.chat_tokens,
        )
    except AgentRTError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    t = manifest["totals"]
    print(
        f"wrote {args.out}: train {t['train']['documents']} documents "
        f"({t['train']['tokens']} tokens), held out {t['heldout']['documents']} "
        f"({t['heldout']['tokens']} tokens), chat {manifest['chat']['answers']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
