"""Checkpoint chains: a full checkpoint and the incremental ones on top of it, restored as one.

A restore point is any checkpoint row; restoring it reads the newest full checkpoint it
descends from (following `parent_id`) and applies every delta down to it. Each link is
verified on its own (size, SHA-256, header digest, fingerprint) and against its parent
(the parent file's SHA-256 and token count recorded in the delta's header), so a tampered,
missing or swapped link is refused with an error that names it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agentrt.errors import CheckpointError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from agentrt.sessions.checkpoint import LoadedCheckpoint
    from agentrt.sessions.fingerprint import Fingerprint
    from agentrt.sessions.layout import SessionLayout
    from agentrt.sessions.records import CheckpointInfo


class BrokenChain(CheckpointError):
    """A link of a checkpoint chain is missing, corrupt or does not fit its parent."""

    def __init__(self, message: str, *, link: CheckpointInfo | None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.link = link


def chain_of(rows: Sequence[CheckpointInfo], target: CheckpointInfo) -> list[CheckpointInfo]:
    """The rows restoring `target` needs, full checkpoint first, `target` last.

    Raises BrokenChain when a parent row is gone (a catalog edited by hand, or an
    incremental checkpoint imported without its base).
    """
    by_id = {c.id: c for c in rows}
    chain = [target]
    while chain[-1].kind == "incremental":
        parent_id = chain[-1].parent_id
        parent = by_id.get(parent_id or "")
        if parent is None:
            raise BrokenChain(
                f"incremental checkpoint {chain[-1].id[:8]} ({chain[-1].file}) has lost its base "
                f"checkpoint {(parent_id or 'none')[:8]}",
                link=chain[-1],
                hint="restore an older full checkpoint of this session",
            )
        if len(chain) > len(rows):
            raise BrokenChain(f"checkpoint {target.id[:8]} has a cyclic chain", link=target)
        chain.append(parent)
    chain.reverse()
    return chain


def needed_by(rows: Sequence[CheckpointInfo], kept: set[str]) -> set[str]:
    """The ids of `kept` rows and every row their chains need (ancestors up to a full one)."""
    by_id = {c.id: c for c in rows}
    need: set[str] = set()
    for cid in kept:
        row = by_id.get(cid)
        while row is not None and row.id not in need:
            need.add(row.id)
            row = by_id.get(row.parent_id or "") if row.kind == "incremental" else None
    return need


def chain_usable(
    rows: Sequence[CheckpointInfo], target: CheckpointInfo, layout: SessionLayout
) -> bool:
    """Whether every link restoring `target` has its row unflagged and its file present."""
    try:
        chain = chain_of(rows, target)
    except BrokenChain:
        return False
    return all(not c.missing and layout.resolve(c.file).is_file() for c in chain)


def load_chain(
    layout: SessionLayout,
    rows: Sequence[CheckpointInfo],
    target: CheckpointInfo,
    *,
    fingerprint: Fingerprint | None = None,
    session: str = "",
) -> LoadedCheckpoint:
    """Verify and read restore point `target` (a full checkpoint, or one with its deltas).

    The result equals what `load_checkpoint` returns for a full checkpoint written at the
    same moment. A bad link raises BrokenChain naming it (its number in the chain, id and
    file); when the link's bytes are gone or damaged, `err.link` is the row to mark missing.
    """
    from agentrt.sessions.checkpoint import (
        CheckpointCorrupt,
        CheckpointFileMissing,
        LoadedCheckpoint,
        load_checkpoint,
        load_delta,
    )
    from agentrt.sessions.delta import apply_deltas

    chain = chain_of(rows, target)
    who = f"of session {session!r} " if session else ""

    def broken(n: int, link: CheckpointInfo, why: str, *, lost: bool) -> BrokenChain:
        err = BrokenChain(
            f"checkpoint chain {who}is broken at link {n} of {len(chain)} (checkpoint "
            f"{link.id[:8]}, {link.kind}, file {link.file}): {why}",
            link=link if lost else None,
            hint="restore an older checkpoint of this session (`agentrt sessions show NAME` "
            "lists them), or run `agentrt sessions gc --verify`",
        )
        return err

    loaded: LoadedCheckpoint | None = None
    deltas = []
    token_ids: list[int] = []
    extra: dict = {}
    for n, link in enumerate(chain, start=1):
        if link.missing:
            raise broken(n, link, "it is marked missing", lost=False)
        path = layout.resolve(link.file)
        expect = {
            "expected_sha256": link.sha256,
            "expected_size": link.size_bytes,
            "fingerprint": fingerprint,
        }
        try:
            if loaded is None:
                if link.kind != "full":
                    raise CheckpointError(f"its chain starts with a {link.kind} checkpoint")
                loaded = load_checkpoint(path, **expect)
                token_ids, extra = list(loaded.token_ids), dict(loaded.extra)
                continue
            delta = load_delta(path, **expect)
        except (CheckpointFileMissing, CheckpointCorrupt) as err:
            raise broken(n, link, err.message, lost=True) from None
        except CheckpointError as err:
            raise broken(n, link, err.message, lost=False) from None
        parent = chain[n - 2]
        if delta.parent_sha256 != parent.sha256 or delta.parent_tokens != len(token_ids):
            raise broken(
                n,
                link,
                f"it was written on top of another checkpoint (sha256 {delta.parent_sha256[:16]}…"
                f", {delta.parent_tokens} tokens), not on link {n - 1} (sha256 "
                f"{parent.sha256[:16]}…, {len(token_ids)} tokens)",
                lost=False,
            )
        lacking = [k for k in delta.extra_names if k not in delta.extra and k not in extra]
        if lacking:
            raise broken(n, link, f"it inherits extra tensors {lacking} nobody holds", lost=True)
        extra = {k: delta.extra.get(k, extra.get(k)) for k in delta.extra_names}
        token_ids += delta.new_tokens
        deltas.append((n, link, delta))
    assert loaded is not None
    if deltas:
        try:
            state = apply_deltas(loaded.state, [d.delta for _, _, d in deltas])
        except CheckpointError as err:
            n, link = _blamed(err.message, deltas)
            raise broken(n, link, f"it does not fit its parent: {err.message}", lost=True) from None
        last = deltas[-1][2]
        loaded = LoadedCheckpoint(
            state=state,
            token_ids=token_ids,
            extra=extra,
            metadata=last.metadata,
            fingerprint_parts=last.fingerprint_parts,
            header=last.header,
            format_version=int(last.header["format_version"]),
        )
    assert loaded is not None
    if loaded.next_pos != target.tokens:
        raise broken(
            len(chain),
            target,
            f"it restores {loaded.next_pos} tokens, {target.tokens} recorded",
            lost=False,
        )
    return loaded


def _blamed(message: str, deltas: list) -> tuple[int, CheckpointInfo]:
    """The (link number, row) a delta error message ("delta K ...") refers to."""
    import re

    found = re.match(r"delta (\d+)", message)
    k = int(found.group(1)) if found else len(deltas)
    n, link, _ = deltas[min(max(k, 1), len(deltas)) - 1]
    return n, link


__all__ = ["BrokenChain", "chain_of", "chain_usable", "load_chain", "needed_by"]
