"""Training data: text / JSONL / chat files → token ids → packed `seq_len` blocks, held-out split.

Formats, chosen by file suffix:
- `.jsonl`: one JSON object per line with `text` (a string) or `messages` (a chat, rendered
  with the tokenizer's chat template); blank lines are skipped;
- anything else: plain UTF-8 text, the whole file one document.
A folder stands for the files directly inside it (sorted). Documents are tokenised, each
followed by EOS, concatenated in file order and cut into blocks of exactly `seq_len`
tokens (the tail that does not fill a block is dropped). Blocks are shuffled with the seed
and the first `max(1, round(eval_fraction · blocks))` are held out (one is always
left to train on). With separate held-out files (`heldout`) every block of the data trains
and the held-out files are packed on their own (at `eval_seq_len` when given): a split by
document, as the corpus script writes it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from agentrt.errors import TaskFileError

JSONL_SUFFIXES = (".jsonl",)


@dataclass
class TokenData:
    """Packed token blocks of a retrofit run."""

    train: torch.Tensor  # [N, seq_len] int64
    heldout: torch.Tensor  # [M, seq_len] int64
    eos_id: int | None  # EOS inputs are excluded from the distillation loss
    documents: int  # documents read
    tokens: int  # tokens read (before dropping the tail)
    files: list[str] = field(default_factory=list)

    def fingerprint(self) -> str:
        """sha256 (16 hex digits) of the training blocks: equal blocks, equal data positions."""
        digest = hashlib.sha256(self.train.numpy().tobytes())
        digest.update(str(tuple(self.train.shape)).encode())
        return digest.hexdigest()[:16]

    def __repr__(self) -> str:
        return (
            f"TokenData(train={tuple(self.train.shape)}, heldout={tuple(self.heldout.shape)}, "
            f"documents={self.documents}, tokens={self.tokens})"
        )


def expand_paths(paths: tuple[str, ...] | list[str]) -> list[Path]:
    """Files named by `paths` (a folder = its files, sorted); TaskFileError when one is missing."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            inner = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
            if not inner:
                raise TaskFileError(f"data folder {path} holds no files")
            files.extend(inner)
        elif path.is_file():
            files.append(path)
        else:
            raise TaskFileError(
                f"data file {path} does not exist", hint="pass text or JSONL files with --data"
            )
    return files


def _read_text(path: Path) -> str:
    """The file's text; TaskFileError when it cannot be read as UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise TaskFileError(
            f"data file {path} is not UTF-8 text (byte {err.start})",
            hint="convert it to UTF-8, or pass JSONL with a `text` field",
        ) from err
    except OSError as err:
        raise TaskFileError(f"cannot read data file {path}: {err.strerror or err}") from err


def _render_chat(tokenizer: Any, messages: Any, where: str) -> str:
    """A chat record rendered with the tokenizer's chat template."""
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and "role" in m and "content" in m for m in messages
    ):
        raise TaskFileError(f"{where}: `messages` must be a list of {{role, content}} objects")
    if not getattr(tokenizer, "chat_template", None):
        raise TaskFileError(
            f"{where}: chat records need a chat template, and this model's tokenizer has none",
            hint="pass the conversations as plain `text` records instead",
        )
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception as err:  # noqa: BLE001 - any template failure is a data problem here
        raise TaskFileError(f"{where}: the chat template failed on this record: {err}") from err


def iter_documents(path: Path, tokenizer: Any) -> Iterator[tuple[str, bool]]:
    """(text, is_chat) per document of one file."""
    text = _read_text(path)
    if path.suffix.lower() not in JSONL_SUFFIXES:
        if text.strip():
            yield text, False
        return
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise TaskFileError(f"{where}: not valid JSON ({err.msg})") from err
        if not isinstance(record, dict):
            raise TaskFileError(f"{where}: each line must be a JSON object")
        if isinstance(record.get("text"), str):
            yield record["text"], False
        elif "messages" in record:
            yield _render_chat(tokenizer, record["messages"], where), True
        else:
            raise TaskFileError(
                f"{where}: a record needs `text` (string) or `messages` (chat)",
                hint='e.g. {"text": "..."} or {"messages": [{"role": "user", "content": "..."}]}',
            )


def tokenize_document(tokenizer: Any, text: str, chat: bool, eos_id: int | None) -> list[int]:
    """Token ids of one document, EOS-terminated (chat templates bring their own BOS)."""
    ids = list(tokenizer(text, add_special_tokens=not chat)["input_ids"])
    if eos_id is not None and (not ids or ids[-1] != eos_id):
        ids.append(eos_id)
    return ids


def split_blocks(
    blocks: torch.Tensor, eval_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffle blocks [N ≥ 2, S] with `seed`; the first max(1, round(f·N)) are held out.

    At least one block is always left to train on.
    """
    n = blocks.shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_eval = min(max(1, round(eval_fraction * n)), n - 1)
    return blocks[perm[n_eval:]], blocks[perm[:n_eval]]


def read_stream(
    paths: tuple[str, ...] | list[str], tokenizer: Any
) -> tuple[torch.Tensor, int, list[Path]]:
    """(token stream, documents, files) of the files `paths` name: EOS-terminated documents."""
    if tokenizer is None:
        raise TaskFileError("the model folder has no tokenizer, so the data cannot be tokenised")
    files = expand_paths(paths)
    eos_id = getattr(tokenizer, "eos_token_id", None)
    parts: list[torch.Tensor] = []
    for path in files:
        for text, chat in iter_documents(path, tokenizer):
            ids = tokenize_document(tokenizer, text, chat, eos_id)
            parts.append(torch.tensor(ids, dtype=torch.int64))
    stream = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)
    if stream.numel() == 0:
        names = ", ".join(str(p) for p in files[:3]) + (" …" if len(files) > 3 else "")
        raise TaskFileError(
            f"the data holds no text ({names})", hint="pass non-empty text or JSONL files"
        )
    return stream, len(parts), files


def pack_blocks(stream: torch.Tensor, seq_len: int, need: int, what: str) -> torch.Tensor:
    """Cut a stream into [N, seq_len] blocks (tail dropped); TaskFileError when N < need."""
    n_blocks = len(stream) // seq_len
    if n_blocks < need:
        raise TaskFileError(
            f"the {what} has {len(stream)} tokens, enough for {n_blocks} block(s) of "
            f"{seq_len} tokens; at least {need} are needed",
            hint="add data or lower seq_len",
        )
    return stream[: n_blocks * seq_len].view(n_blocks, seq_len)


def prepare_data(
    paths: tuple[str, ...] | list[str],
    tokenizer: Any,
    *,
    seq_len: int,
    eval_fraction: float,
    seed: int,
    heldout: tuple[str, ...] | list[str] = (),
    eval_seq_len: int = 0,
) -> TokenData:
    """Read, tokenise, pack and split the data; TaskFileError when it is empty or too small.

    Without `heldout` the blocks are split with `eval_fraction`; with it, every data block
    trains and the held-out files are packed at `eval_seq_len` (0: seq_len).
    """
    stream, documents, files = read_stream(paths, tokenizer)
    eos_id = getattr(tokenizer, "eos_token_id", None)
    if heldout:
        train = pack_blocks(stream, seq_len, 1, "training data")
        held_stream, held_docs, held_files = read_stream(heldout, tokenizer)
        held = pack_blocks(held_stream, eval_seq_len or seq_len, 1, "held-out data")
        return TokenData(
            train=train,
            heldout=held,
            eos_id=eos_id,
            documents=documents + held_docs,
            tokens=int(stream.numel() + held_stream.numel()),
            files=[str(p) for p in files + held_files],
        )
    if len(stream) // seq_len < 2:
        n_blocks = len(stream) // seq_len
        raise TaskFileError(
            f"the data has {len(stream)} tokens, enough for {n_blocks} block(s) of "
            f"seq_len={seq_len}; at least 2 are needed (one to train on, one held out)",
            hint="add data or lower seq_len",
        )
    blocks = pack_blocks(stream, seq_len, 2, "data")
    train, held = split_blocks(blocks, eval_fraction, seed)
    return TokenData(
        train=train,
        heldout=held,
        eos_id=eos_id,
        documents=documents,
        tokens=int(stream.numel()),
        files=[str(p) for p in files],
    )


class BatchOrder:
    """Which training blocks each micro-batch uses: a pure function of (seed, step, micro).

    Sample k = (step · grad_accum + micro) · batch_size + j walks a fresh seeded permutation
    of the blocks every epoch, so a resumed run sees exactly the batches it would have seen.
    """

    def __init__(self, num_blocks: int, batch_size: int, grad_accum: int, seed: int) -> None:
        self.num_blocks = num_blocks
        self.batch_size = batch_size
        self.grad_accum = grad_accum
        self.seed = seed
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        """The seeded permutation [num_blocks] of `epoch` (only the latest one is kept)."""
        if epoch not in self._perms:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch + 1)
            self._perms = {epoch: torch.randperm(self.num_blocks, generator=gen)}
        return self._perms[epoch]

    def indices(self, step: int, micro: int) -> list[int]:
        """Block indices of micro-batch `micro` of update `step`."""
        first = (step * self.grad_accum + micro) * self.batch_size
        out = []
        for k in range(first, first + self.batch_size):
            epoch, pos = divmod(k, self.num_blocks)
            out.append(int(self._perm(epoch)[pos]))
        return out
