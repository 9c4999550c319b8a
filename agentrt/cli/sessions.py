"""`agentrt sessions`: list, show, remove, fork and garbage-collect saved sessions.

`export` and `import` live in `agentrt.cli.sessions_archive` with the catalog plumbing
they share with `fork`. No command here needs a model, except `fork --model`, which
verifies the copied checkpoint against one. Heavy packages are imported inside commands.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import click

from agentrt.cli.options import db_option, home_option, resolve_settings
from agentrt.cli.sessions_archive import (
    BlobCopy,
    SessionCopy,
    as_json,
    catalog,
    copy_file,
    count,
    create_copy,
    export,
    human_bytes,
    import_session,
    remove_session_dir,
    require_store,
    session_lock,
)
from agentrt.errors import AgentRTError, CheckpointError, SessionError

if TYPE_CHECKING:
    from agentrt.sessions import CheckpointInfo, SessionStore

PREVIEW_CHARS = 80
TEMP_PREFIX = ".tmp-"  # agentrt.sessions.atomic.TEMP_PREFIX (not imported: keeps this module light)


@click.group()
def sessions() -> None:
    """List, inspect, remove, fork, export, import and clean up saved sessions."""


sessions.add_command(export)
sessions.add_command(import_session)


# -- formatting --------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    """Plain-text table lines; columns whose index is in `right` are right-aligned."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        parts = [
            str(c).rjust(w) if i in right else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    return [line(headers), *(line(r) for r in rows)]


def local_time(value: Any) -> str:
    """A UTC datetime as local `YYYY-MM-DD HH:MM`."""
    return value.astimezone().strftime("%Y-%m-%d %H:%M")


def short_model(model: str, width: int = 32) -> str:
    """A model folder or id, shortened from the left to `width` characters."""
    return model if len(model) <= width else "…" + model[-(width - 1) :]


def preview(text: str, full: bool) -> tuple[str, bool]:
    """(first PREVIEW_CHARS characters with newlines shown as ⏎, truncated?); all with `full`."""
    if full:
        return text, False
    flat = text.replace("\r", "").replace("\n", "⏎")
    return flat[:PREVIEW_CHARS], len(flat) > PREVIEW_CHARS


def layer_compression(path: Path) -> list[dict[str, Any]]:
    """Per-layer slots and compression (tokens · H_kv / slots) read from a checkpoint file.

    Reads only the header and the small `layer.{l}.lens` [H_kv] tensors (no model, no torch).
    Raises CheckpointError when the file is missing or unreadable.
    """
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            tokens = int(meta.get("next_pos") or meta["tokens"])
            heads = int(meta["num_kv_heads"])
            lens = [f.get_tensor(f"layer.{i}.lens") for i in range(int(meta["num_layers"]))]
    except Exception as err:  # safetensors raises its own and builtin errors
        raise CheckpointError(f"checkpoint file {path} is unreadable: {err}") from None
    return [
        {
            "layer": i,
            "slots": int(row.sum()),
            "compression_ratio": tokens * heads / int(row.sum()) if row.sum() else 1.0,
        }
        for i, row in enumerate(lens)
    ]


# -- ls / show ---------------------------------------------------------------------------


@sessions.command("ls")
@click.option("--json", "json_out", is_flag=True, help="Print JSON for machines.")
@home_option
@db_option
@click.pass_context
def ls(ctx: click.Context, json_out: bool, **_: Any) -> None:
    """List saved sessions, most recently updated first."""
    with catalog(resolve_settings(ctx), readonly=True) as store:
        found = store.list_sessions() if store is not None else []
    if json_out:
        click.echo(json.dumps([as_json(s) for s in found], indent=2))
        return
    if not found:
        click.echo("No sessions yet. Sessions appear here once an agentrt engine saves one.")
        return
    rows = [
        [
            s.name,
            short_model(s.model),
            str(s.tokens),
            human_bytes(s.kv_bytes),
            f"{s.compression_ratio:.2f}",
            local_time(s.updated_at),
            s.status + (" (pinned)" if s.pinned else ""),
        ]
        for s in found
    ]
    headers = ["NAME", "MODEL", "TOKENS", "KV", "CR", "UPDATED", "STATUS"]
    click.echo("\n".join(table(headers, rows, right={2, 3, 4})))


@sessions.command("show")
@click.argument("name")
@click.option("--full", is_flag=True, help="Print whole messages, not their first 80 characters.")
@click.option("--json", "json_out", is_flag=True, help="Print JSON for machines.")
@home_option
@db_option
@click.pass_context
def show(ctx: click.Context, name: str, full: bool, json_out: bool, **_: Any) -> None:
    """Show a session: its fields, messages, checkpoints and per-layer compression."""
    settings = resolve_settings(ctx)
    with catalog(settings, readonly=True) as store:
        store = require_store(store, name)
        info = store.get_session(name)
        messages = store.messages(info)
        checkpoints = store.checkpoints(info)
        latest = store.latest_checkpoint(info)
    layers: list[dict[str, Any]] | None = None
    layers_error = None if latest is not None else "no usable checkpoint"
    if latest is not None:
        try:
            layers = layer_compression(settings.home / latest.file)
        except CheckpointError as err:
            layers_error = err.message
    shown = []
    for m in messages:
        text, cut = preview(m.content, full)
        shown.append({**as_json(m), "content": text, "truncated": cut, "chars": len(m.content)})
    if json_out:
        report = {
            "session": as_json(info),
            "messages": shown,
            "checkpoints": [as_json(c) for c in checkpoints],
            "layers": layers,
            "layers_error": layers_error,
        }
        click.echo(json.dumps(report, indent=2))
        return
    fields = [
        ("name", info.name),
        ("id", info.id),
        ("model", info.model),
        ("fingerprint", info.fingerprint[:16]),
        ("status", info.status + (" (pinned)" if info.pinned else "")),
        ("tags", ", ".join(info.tags) or "-"),
        ("tokens", str(info.tokens)),
        ("slots", str(info.slots)),
        ("KV", human_bytes(info.kv_bytes)),
        ("CR", f"{info.compression_ratio:.2f}"),
        ("created", local_time(info.created_at)),
        ("updated", local_time(info.updated_at)),
    ]
    for key, value in fields:
        click.echo(f"{key:<12} {value}")
    click.echo(f"\nmessages ({len(messages)})")
    for m in shown:
        more = f"… ({m['chars']} chars)" if m["truncated"] else ""
        click.echo(f"  {m['seq']:>4} {m['role']:<9} {m['content']}{more}")
    click.echo(f"\ncheckpoints ({len(checkpoints)})")
    if checkpoints:
        rows = [
            [
                local_time(c.created_at),
                human_bytes(c.size_bytes),
                str(c.tokens),
                f"{c.compression_ratio:.2f}",
                c.kind,
                c.id[:8],
                "MISSING" if c.missing else "",
            ]
            for c in checkpoints
        ]
        headers = ["CREATED", "SIZE", "TOKENS", "CR", "KIND", "ID", ""]
        click.echo("\n".join("  " + line for line in table(headers, rows, right={1, 2, 3})))
    click.echo("\nper-layer compression (latest checkpoint)")
    if layers is None:
        click.echo(f"  unavailable: {layers_error}")
    for layer in layers or []:
        click.echo(
            f"  layer {layer['layer']:>3}  slots {layer['slots']:>8}  "
            f"CR {layer['compression_ratio']:.2f}"
        )


# -- rm / fork ---------------------------------------------------------------------------


@sessions.command("rm")
@click.argument("name")
@click.option(
    "--keep-checkpoints", is_flag=True, help="Delete the rows but leave the checkpoint files."
)
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@home_option
@db_option
@click.pass_context
def rm(ctx: click.Context, name: str, keep_checkpoints: bool, yes: bool, **_: Any) -> None:
    """Delete a session: its row, messages, checkpoint rows and checkpoint files."""
    settings = resolve_settings(ctx)
    with catalog(settings, readonly=True) as store:
        store = require_store(store, name)
        info = store.get_session(name)
        checkpoints = store.checkpoints(info)
        size = sum(c.size_bytes for c in checkpoints)
        if not yes:
            what = "keeping its files" if keep_checkpoints else f"{human_bytes(size)} of files"
            click.confirm(
                f"Delete session {info.name!r} ({count(len(checkpoints), 'checkpoint')}, {what})?",
                abort=True,
                err=True,
            )
        with session_lock(settings.home, info.id, info.name, create=False):
            files = store.delete_session(info, keep_checkpoints=keep_checkpoints)
            for file in files:
                (settings.home / file).unlink(missing_ok=True)
            remove_session_dir(settings.home, info.id)
    if keep_checkpoints:
        kept = count(len(checkpoints), "checkpoint file")
        click.echo(f"deleted session {info.name!r}; kept {kept}:")
        for c in checkpoints:
            click.echo(f"  {settings.home / c.file}")
        click.echo("(unreferenced files are removed by the next `agentrt sessions gc`)")
    else:
        click.echo(f"deleted session {info.name!r} and {count(len(files), 'checkpoint file')}")


def verified_model(home: Path, model_dir: Path, ckpt: CheckpointInfo) -> str:
    """Check that checkpoint `ckpt` restores into the model in `model_dir`; its folder name.

    The model is loaded on the CPU in the dtype the checkpoint was saved with; any other
    difference (config, weights, tokenizer, DMS config) raises CheckpointError naming it.
    """
    import torch
    from safetensors import safe_open

    from agentrt.models.resolve import load_resolved
    from agentrt.sessions import load_checkpoint, model_fingerprint

    path = home / ckpt.file
    with safe_open(str(path), framework="numpy") as f:
        dtype = getattr(torch, (f.metadata() or {}).get("dtype", "float32"))
    model = load_resolved(model_dir, device="cpu", dtype=dtype, home=home)
    fingerprint = model_fingerprint(model, model_dir=model.source_dir, cache_dir=home)
    load_checkpoint(
        path, expected_sha256=ckpt.sha256, expected_size=ckpt.size_bytes, fingerprint=fingerprint
    )
    return str(model.source_dir)


@sessions.command("fork")
@click.argument("name")
@click.argument("new")
@click.option(
    "--model",
    "model_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Verify the checkpoint against this model folder and record it as the fork's model.",
)
@home_option
@db_option
@click.pass_context
def fork(ctx: click.Context, name: str, new: str, model_dir: Path | None, **_: Any) -> None:
    """Copy session NAME's newest checkpoint and messages into a new session NEW (no model)."""
    settings = resolve_settings(ctx)
    home = settings.home
    with catalog(settings) as store:
        assert store is not None
        info = store.get_session(name)
        ckpt = store.latest_checkpoint(info)
        if ckpt is None:
            raise CheckpointError(
                f"session {info.name!r} has no usable checkpoint to fork",
                hint="save it first (or run `agentrt sessions gc` if its files were lost)",
            )
        if ckpt.kind != "full":
            raise CheckpointError("forking from an incremental checkpoint is not supported yet")
        model = verified_model(home, model_dir, ckpt) if model_dir is not None else info.model
        scale = ckpt.slots / info.slots if info.slots else 0.0
        row = {
            **as_json(info),
            "model": model,
            "tokens": ckpt.tokens,
            "slots": ckpt.slots,
            "compression_ratio": ckpt.compression_ratio,
            "kv_bytes": info.kv_bytes if ckpt.slots == info.slots else int(info.kv_bytes * scale),
        }
        messages = [  # what the checkpoint covers (+1: a sampled token not yet fed)
            as_json(m)
            for m in store.messages(info)
            if m.token_end is None or m.token_end <= ckpt.tokens + 1
        ]
        blob = BlobCopy(
            row=as_json(ckpt),
            filename=PurePosixPath(ckpt.file).name,
            write=copy_file(home / ckpt.file),
        )
        copy = SessionCopy(name=new, row=row, status="saved", messages=messages, checkpoints=[blob])
        created = create_copy(store, home, copy)
    click.echo(
        f"forked {info.name!r} into {created.name!r} ({created.id[:8]}) at {ckpt.tokens} tokens"
    )


# -- gc ----------------------------------------------------------------------------------


class _Report:
    """Collects what gc did (or would do, with --dry-run) and prints it."""

    def __init__(self, dry_run: bool) -> None:
        self.dry_run = dry_run
        self.counts: dict[str, int] = defaultdict(int)
        self.freed = 0

    def say(self, kind: str, text: str, freed: int = 0) -> None:
        self.counts[kind] += 1
        self.freed += freed
        click.echo(f"{'would ' if self.dry_run else ''}{text}")


def _checkpoint_status(store: SessionStore, home: Path, verify: bool, report: _Report) -> None:
    """Mark rows whose blob is gone (or, with verify, does not hash right) missing."""
    from agentrt.sessions import file_sha256

    for c in store.checkpoints():
        path = home / c.file
        problem = None if path.is_file() else "its file is missing"
        if problem is None and verify and file_sha256(path) != (c.size_bytes, c.sha256):
            problem = "its file does not match the recorded sha256"
        if problem is not None and not c.missing:
            report.say("marked", f"mark checkpoint {c.id[:8]} ({c.file}) missing: {problem}")
            if not report.dry_run:
                store.mark_checkpoint_missing(c.id)
        elif problem is None and verify and c.missing:
            report.say("restored", f"clear the missing flag of checkpoint {c.id[:8]} (verified)")
            if not report.dry_run:
                store.mark_checkpoint_missing(c.id, missing=False)


def _prune(store: SessionStore, home: Path, keep: int, report: _Report) -> None:
    """Delete all but the `keep` newest usable checkpoints of every unpinned session."""
    by_session: dict[str, list[CheckpointInfo]] = defaultdict(list)
    for c in store.checkpoints():
        by_session[c.session_id].append(c)
    for info in store.list_sessions():
        if info.pinned:
            continue
        newest_first = sorted(by_session[info.id], key=lambda c: c.created_at, reverse=True)
        usable = 0
        for c in newest_first:
            if usable >= keep:
                size = (home / c.file).stat().st_size if (home / c.file).is_file() else 0
                text = f"prune checkpoint {c.id[:8]} of {info.name!r} ({local_time(c.created_at)})"
                if report.dry_run:
                    report.say("pruned", text, size)
                    continue
                try:
                    file = store.delete_checkpoint(c.id)
                except CheckpointError as err:
                    click.echo(f"kept checkpoint {c.id[:8]} of {info.name!r}: {err.message}")
                    continue
                (home / file).unlink(missing_ok=True)
                report.say("pruned", text, size)
            elif not c.missing:
                usable += 1


def _collect_files(store: SessionStore, home: Path, report: _Report) -> None:
    """Remove blobs no row references and stale `.tmp-` files, skipping sessions in use."""
    root = home / "checkpoints"
    if not root.is_dir():
        return
    live = {s.id for s in store.list_sessions()}
    referenced = {os.path.normpath(home / c.file) for c in store.checkpoints()}
    for folder in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
        junk = [
            p
            for p in sorted(folder.iterdir())
            if p.is_file()
            and (
                p.name.startswith(TEMP_PREFIX)
                or (p.suffix == ".safetensors" and os.path.normpath(p) not in referenced)
            )
        ]
        gone = folder != root and folder.name not in live
        if not junk and not gone:
            continue
        lock = nullcontext() if folder == root else session_lock(home, folder.name, folder.name)
        try:
            with lock:
                for p in junk:
                    kind = "temp" if p.name.startswith(TEMP_PREFIX) else "orphan"
                    what = "stale temp file" if kind == "temp" else "orphaned checkpoint file"
                    size = p.stat().st_size
                    report.say(kind, f"remove {what} {p} ({human_bytes(size)})", size)
                    if not report.dry_run:
                        p.unlink(missing_ok=True)
                if gone and not report.dry_run:
                    remove_session_dir(home, folder.name)
        except SessionError:
            click.echo(f"skipped {folder}: its session is open in another agentrt process")


@sessions.command("gc")
@click.option(
    "--keep",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Keep only the N newest checkpoints of each session (pinned sessions keep all).",
)
@click.option("--verify", is_flag=True, help="Also hash every checkpoint file (slow).")
@click.option("--dry-run", is_flag=True, help="Only print what would be done.")
@home_option
@db_option
@click.pass_context
def gc(ctx: click.Context, keep: int | None, verify: bool, dry_run: bool, **_: Any) -> None:
    """Repair and clean the checkpoint folder.

    Marks checkpoints whose file is gone as missing, removes files no session references
    and `.tmp-` leftovers of interrupted saves, and with --keep N prunes old checkpoints.
    Folders of sessions open in another agentrt process are skipped.
    """
    settings = resolve_settings(ctx)
    report = _Report(dry_run)
    with catalog(settings, readonly=True) as store:
        if store is None:
            click.echo("nothing to collect: no sessions saved yet")
            return
        try:
            _checkpoint_status(store, settings.home, verify, report)
            if keep is not None:
                _prune(store, settings.home, keep, report)
            _collect_files(store, settings.home, report)
        except AgentRTError:
            click.echo("gc stopped early; what is listed above was done", err=True)
            raise
    c = report.counts
    click.echo(
        f"gc{' (dry run, nothing changed)' if dry_run else ''}: "
        f"{count(c['orphan'], 'orphaned file')}, {count(c['temp'], 'temp file')} removed, "
        f"{count(c['marked'], 'checkpoint')} marked missing, {c['pruned']} pruned, "
        f"{human_bytes(report.freed)} freed"
    )


__all__ = ["fork", "gc", "ls", "rm", "sessions", "show"]
