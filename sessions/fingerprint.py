"""Model fingerprint: what a checkpoint's KV depends on, hashed part by part.

Parts: `config` (HF config without dms_* and volatile keys), `weights` (the model folder's
weight files, or the tensors), `tokenizer`, `chat_template`, `dms_config`, `dtype`, and
`weight_delta` when shipped adapters merged a LoRA into the weights. A
checkpoint records every part, so a refusal names exactly what changed. Weight-file
digests are cached in `<cache_dir>/fingerprints.json` keyed by path, size and mtime; so is
the tokenizer's digest when the tokenizer was loaded from the model folder (keyed by its
files' sizes and mtimes and its class, length and special tokens), since hashing a
tokenizer's vocabulary costs more than restoring a whole session.

torch and transformers are never imported here: the model is only duck-typed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentrt.errors import ModelLoadError
from agentrt.sessions.atomic import file_sha256, write_bytes_atomic

PART_NAMES = ("config", "weights", "tokenizer", "chat_template", "dms_config", "dtype")
CACHE_FILE = "fingerprints.json"
CACHE_VERSION = 1
NONE = "none"
# Config keys that say where/how a model was loaded, not what it computes.
VOLATILE_CONFIG_KEYS = frozenset(
    {
        "_name_or_path",
        "_commit_hash",
        "architectures",
        "auto_map",
        "dtype",
        "torch_dtype",
        "transformers_version",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
        "use_cache",
    }
)
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")


@dataclass(frozen=True)
class Fingerprint:
    """Named hashes of everything a KV cache depends on; `digest` summarises them."""

    parts: dict[str, str]

    def __post_init__(self) -> None:
        """Check that parts map strings to strings."""
        bad = [k for k, v in self.parts.items() if not isinstance(k, str) or not isinstance(v, str)]
        if bad:
            raise TypeError(f"fingerprint parts must map str to str, bad keys: {bad}")

    def __hash__(self) -> int:
        """Hash by digest (parts is a dict)."""
        return hash(self.digest)

    @property
    def digest(self) -> str:
        """Hex SHA-256 of the sorted parts."""
        return _sha256_text(json.dumps(self.parts, sort_keys=True, separators=(",", ":")))

    def diff(self, other: Fingerprint) -> list[str]:
        """Names of the parts that differ (present in only one side counts), sorted."""
        names = set(self.parts) | set(other.parts)
        return sorted(n for n in names if self.parts.get(n) != other.parts.get(n))

    def describe_diff(self, other: Fingerprint, labels: tuple[str, str] = ("this", "other")) -> str:
        """Differing parts with both values, hashes shortened: "dtype (this float32, other float64)"."""

        def show(name: str, value: str | None) -> str:
            return "absent" if value is None else value if name == "dtype" else value[:20]

        mine, theirs = labels
        return ", ".join(
            f"{n} ({mine} {show(n, self.parts.get(n))}, {theirs} {show(n, other.parts.get(n))})"
            for n in self.diff(other)
        )

    def to_json(self) -> str:
        """The parts as compact, sorted JSON."""
        return json.dumps(self.parts, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Fingerprint:
        """Inverse of `to_json`."""
        return cls(parts=dict(json.loads(text)))


def model_fingerprint(
    model: Any, *, model_dir: Path | None = None, cache_dir: Path | None = None
) -> Fingerprint:
    """Fingerprint a `DMSModel`: weights from `model_dir`'s files when given, else its tensors.

    Hashing files is cheap with `cache_dir` (per-file digests reused while size and mtime
    hold); without `model_dir` every tensor is hashed (fine for small or in-memory models).
    The two weight sources give different digests: a caller must use one consistently.
    """
    tokenizer = getattr(model, "tokenizer", None)
    dms = getattr(model, "dms", None)
    if model_dir is not None:  # one read and at most one write of the cache file
        cache = _FileDigestCache(cache_dir)
        weights = "files:" + _weight_files_digest(Path(model_dir), cache)
        tokens = _cached_tokenizer_digest(tokenizer, Path(model_dir), cache)
        cache.save()
    else:
        weights = "tensors:" + state_dict_digest(model)
        tokens = tokenizer_digest(tokenizer)
    parts = {
        "config": config_digest(model.hf.config),
        "weights": weights,
        "tokenizer": tokens,
        "chat_template": _text_or_none(getattr(tokenizer, "chat_template", None)),
        "dms_config": NONE if dms is None else _sha256_json(dms.to_hf_dict()),
        "dtype": str(model.dtype).removeprefix("torch."),
    }
    delta = getattr(model, "weight_delta", None)
    if isinstance(delta, str):  # a LoRA merged into the weights (not in the folder's files)
        parts["weight_delta"] = delta
    return Fingerprint(parts=parts)


def config_digest(hf_config: Any) -> str:
    """SHA-256 of the HF config as sorted JSON, without dms_* and volatile keys."""
    raw = hf_config.to_dict() if hasattr(hf_config, "to_dict") else dict(hf_config)
    kept = {
        k: v
        for k, v in raw.items()
        if not k.startswith("dms_")
        and k not in VOLATILE_CONFIG_KEYS
        and not k.startswith("_attn_implementation")
    }
    return _sha256_json(kept)


def state_dict_digest(model: Any) -> str:
    """SHA-256 over every state_dict tensor (see `tensors_sha256`)."""
    return tensors_sha256(model.state_dict())


def tensors_sha256(tensors: dict[str, Any]) -> str:
    """SHA-256 over (name, dtype, shape, bytes) of every tensor, in name order."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        flat = tensor.reshape(-1).contiguous().cpu()
        if flat.numel():
            digest.update(memoryview(flat.view(torch.uint8).numpy()))
    return digest.hexdigest()


def weight_files_digest(model_dir: Path, *, cache_dir: Path | None = None) -> str:
    """SHA-256 over the sorted (relative name, file digest) of the folder's weight files."""
    cache = _FileDigestCache(cache_dir)
    digest = _weight_files_digest(model_dir, cache)
    cache.save()
    return digest


def _weight_files_digest(model_dir: Path, cache: _FileDigestCache) -> str:
    """`weight_files_digest` with per-file digests from (and into) `cache`, unsaved."""
    files = sorted({p for pattern in WEIGHT_PATTERNS for p in model_dir.glob(pattern)})
    if not files:
        raise ModelLoadError(
            f"no weight files ({', '.join(WEIGHT_PATTERNS)}) in model folder {model_dir}",
            hint="pass the folder the model was loaded from, or model_dir=None to hash tensors",
        )
    lines = [f"{p.name}:{cache.digest(p)}" for p in files]
    return _sha256_text("\n".join(lines))


def hash_file(path: Path) -> str:
    """Hex SHA-256 of one file, streamed in 1 MiB chunks."""
    return file_sha256(path)[1]


def tokenizer_digest(tokenizer: Any) -> str:
    """SHA-256 of a tokenizer's vocabulary, merges, added and special tokens; "none" without one."""
    if tokenizer is None:
        return NONE
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)  # per-call state set by tokenizer(..., truncation=True)
        spec.pop("padding", None)
    else:
        spec = {"vocab": sorted(tokenizer.get_vocab().items())}
    spec["special_tokens"] = sorted(str(t) for t in getattr(tokenizer, "all_special_tokens", []))
    spec["class"] = type(tokenizer).__name__
    return _sha256_json(spec)


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)
TOKENIZER_DIGEST_VERSION = 1  # bump when `tokenizer_digest` changes: cached values then expire


def cached_tokenizer_digest(tokenizer: Any, model_dir: Path, *, cache_dir: Path | None) -> str:
    """`tokenizer_digest`, reused from `cache_dir` while the tokenizer's stamp holds.

    Only a tokenizer loaded from `model_dir` has a stamp (its files' names, sizes and
    mtimes there, plus its class, length and special tokens, so tokens added in memory
    count); any other is hashed every time.
    """
    cache = _FileDigestCache(cache_dir)
    digest = _cached_tokenizer_digest(tokenizer, model_dir, cache)
    cache.save()
    return digest


def _cached_tokenizer_digest(tokenizer: Any, model_dir: Path, cache: _FileDigestCache) -> str:
    """`cached_tokenizer_digest` from (and into) `cache`, unsaved; no cache file: hashed."""
    stamp = _tokenizer_stamp(tokenizer, model_dir) if cache.path is not None else None
    if stamp is None:
        return tokenizer_digest(tokenizer)
    key = f"tokenizer:{model_dir.resolve()}"
    return cache.memo(key, stamp, lambda: tokenizer_digest(tokenizer))


def _tokenizer_stamp(tokenizer: Any, model_dir: Path) -> str | None:
    """What a cached tokenizer digest is valid for, or None when it did not come from model_dir."""
    source = getattr(tokenizer, "name_or_path", None)
    if tokenizer is None or not source:
        return None
    try:
        if Path(source).resolve() != model_dir.resolve():
            return None
        files = []
        for name in TOKENIZER_FILES:
            path = model_dir / name
            if path.is_file():
                st = path.stat()
                files.append([name, st.st_size, st.st_mtime_ns])
    except OSError:
        return None
    if not files:
        return None
    special = sorted(str(t) for t in getattr(tokenizer, "all_special_tokens", []))
    return _sha256_json(
        {
            "files": files,
            "class": type(tokenizer).__name__,
            "library": _library_version(tokenizer),  # a new release may digest differently
            "len": len(tokenizer),
            "special": special,
            "method": TOKENIZER_DIGEST_VERSION,
        }
    )


def _library_version(obj: Any) -> str:
    """'transformers 5.25.0' for an object of that package (its name alone when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    top = type(obj).__module__.split(".")[0]
    try:
        return f"{top} {version(top)}"
    except PackageNotFoundError:
        return top


class _FileDigestCache:
    """Per-file SHA-256 digests in `<cache_dir>/fingerprints.json`, valid while size/mtime hold."""

    def __init__(self, cache_dir: Path | None) -> None:
        """Read the cache file (a missing or unreadable one is an empty cache)."""
        self.path = None if cache_dir is None else Path(cache_dir) / CACHE_FILE
        self.entries: dict[str, dict[str, Any]] = {}
        self.memos: dict[str, dict[str, Any]] = {}  # digests of in-memory objects, by stamp
        self.dirty = False
        if self.path is not None and self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
                if data.get("version") == CACHE_VERSION:
                    self.entries = dict(data["files"])
                    self.memos = dict(data.get("memos", {}))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                self.entries, self.memos = {}, {}

    def memo(self, key: str, stamp: str, compute: Any) -> str:
        """The digest stored under `key` if its stamp matches, else `compute()` (then stored)."""
        entry = self.memos.get(key)
        if isinstance(entry, dict) and entry.get("stamp") == stamp:
            value = entry.get("sha256")
            if isinstance(value, str):
                return value
        value = compute()
        self.memos[key] = {"stamp": stamp, "sha256": value}
        self.dirty = True
        return value

    def digest(self, path: Path) -> str:
        """Digest of `path`, from the cache when (path, size, mtime_ns) match."""
        key = str(path.resolve())
        st = os.stat(path)
        entry = self.entries.get(key)
        if (
            isinstance(entry, dict)
            and entry.get("size") == st.st_size
            and entry.get("mtime_ns") == st.st_mtime_ns
            and isinstance(entry.get("sha256"), str)
        ):
            return entry["sha256"]
        digest = hash_file(path)
        self.entries[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
        self.dirty = True
        return digest

    def save(self) -> None:
        """Write the cache back crash-safely when something changed."""
        if self.path is None or not self.dirty:
            return
        data = {"version": CACHE_VERSION, "files": self.entries, "memos": self.memos}
        write_bytes_atomic(self.path, json.dumps(data, indent=1, sort_keys=True).encode())
        self.dirty = False


def _text_or_none(text: Any) -> str:
    """SHA-256 of a string (or JSON of anything else); "none" for None."""
    if text is None:
        return NONE
    return _sha256_text(text) if isinstance(text, str) else _sha256_json(text)


def _sha256_text(text: str) -> str:
    """Hex SHA-256 of UTF-8 text."""
    return hashlib.sha256(text.encode()).hexdigest()


def _sha256_json(value: Any) -> str:
    """Hex SHA-256 of sorted, compact JSON (non-JSON values through str)."""
    return _sha256_text(json.dumps(value, sort_keys=True, separators=(",", ":"), default=str))


__all__ = [
    "PART_NAMES",
    "Fingerprint",
    "cached_tokenizer_digest",
    "config_digest",
    "hash_file",
    "model_fingerprint",
    "state_dict_digest",
    "tensors_sha256",
    "tokenizer_digest",
    "weight_files_digest",
]
