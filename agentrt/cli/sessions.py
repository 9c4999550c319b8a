"""`agentrt sessions`: list, show, remove, fork and garbage-collect saved sessions.

The commands parse and print; files, locks, copies and gc belong to `agentrt.sessions`.
`export` and `import` live in `agentrt.cli.sessions_archive`. No command here needs a
model, except `fork --model`, which verifies the copied checkpoint against one. Heavy
packages are imported inside commands.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from agentrt.cli.options import db_option, home_option, resolve_settings
from agentrt.cli.sessions_archive import (
    catalog,
    count,
    export,
    human_bytes,
    import_session,
    layout_of,
)
from agentrt.cli.sessions_tags import tag, untag
from agentrt.errors import AgentRTError, CheckpointError

if TYPE_CHECKING:
    from agentrt.sessions import CheckpointInfo
    from agentrt.sessions.layout import SessionLayout

PREVIEW_CHARS = 80


@click.group()
def sessions() -> None:
    """List, inspect, remove, fork, export, import and clean up saved sessions."""


sessions.add_command(export)
sessions.add_command(import_session)
sessions.add_command(tag)
sessions.add_command(untag)


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


# -- ls / show ---------------------------------------------------------------------------


@sessions.command("ls")
@click.option("--json", "json_out", is_flag=True, help="Print JSON for machines.")
@home_option
@db_option
@click.pass_context
def ls(ctx: click.Context, json_out: bool, **_: Any) -> None:
    """List saved sessions, most recently updated first."""
    from agentrt.sessions.archive import as_json

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
    from agentrt.sessions.archive import as_json
    from agentrt.sessions.catalog import require_store
    from agentrt.sessions.checkpoint import layer_compression

    settings = resolve_settings(ctx)
    layout = layout_of(settings)
    with catalog(settings, readonly=True) as store:
        store = require_store(store, name)
        info = store.get_session(name)
        messages = store.messages(info)
        checkpoints = store.checkpoints(info)
        lineage = store.lineage(info)  # with the links a fork's chain borrows from its parent
    problems = {c.id: checkpoint_problem(layout, c) for c in lineage}
    chain_problems(lineage, problems)
    latest = None
    for c in reversed(checkpoints):  # the newest usable one, its full SHA-256 checked
        if problems[c.id] is None:
            problems[c.id] = checkpoint_problem(layout, c, hash=True)
            chain_problems(lineage, problems)
            if problems[c.id] is None:
                latest = c
                break
    if latest is not None and checkpoints[-1].id != latest.id:
        newest = len(checkpoints)
        click.echo(
            f"warning: the newest checkpoint ({newest}) is unusable: {problems[checkpoints[-1].id]}"
            f"; `agentrt resume {info.name}` refuses it until you choose one with --checkpoint N",
            err=True,
        )
    layers: list[dict[str, Any]] | None = None
    layers_error = None if latest is not None else "no usable checkpoint"
    if latest is not None:
        try:
            layers = layer_compression(layout.resolve(latest.file))
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
            "checkpoints": [
                {**as_json(c), "number": n, "missing": problems[c.id] is not None}
                for n, c in enumerate(checkpoints, start=1)
            ],
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
                str(n),
                local_time(c.created_at),
                human_bytes(c.size_bytes),
                str(c.tokens),
                f"{c.compression_ratio:.2f}",
                c.kind,
                c.id[:8],
                c.label or "",
                "" if problems[c.id] is None else "MISSING",
            ]
            for n, c in enumerate(checkpoints, start=1)
        ]
        headers = ["#", "CREATED", "SIZE", "TOKENS", "CR", "KIND", "ID", "TAG", ""]
        click.echo("\n".join("  " + line for line in table(headers, rows, right={0, 2, 3, 4})))
    click.echo("\nper-layer compression (newest usable checkpoint)")
    if layers is None:
        click.echo(f"  unavailable: {layers_error}")
    for layer in layers or []:
        click.echo(
            f"  layer {layer['layer']:>3}  slots {layer['slots']:>8}  "
            f"CR {layer['compression_ratio']:.2f}"
        )


def chain_problems(checkpoints: list[CheckpointInfo], problems: dict[str, str | None]) -> None:
    """Give each incremental checkpoint whose chain has an unusable link that link's problem."""
    from agentrt.sessions.chain import BrokenChain, chain_of

    for c in checkpoints:
        if problems[c.id] is not None or c.kind != "incremental":
            continue
        try:
            bad = [link for link in chain_of(checkpoints, c)[:-1] if problems[link.id]]
        except BrokenChain as err:
            problems[c.id] = err.message
            continue
        if bad:
            problems[c.id] = f"its chain link {bad[0].id[:8]} is unusable ({problems[bad[0].id]})"


def checkpoint_problem(
    layout: SessionLayout, c: CheckpointInfo, *, hash: bool = False
) -> str | None:
    """Why a checkpoint cannot be used (flagged, file gone, wrong size, and with `hash` a
    wrong SHA-256), or None."""
    from agentrt.sessions.atomic import file_sha256

    path = layout.resolve(c.file)
    if c.missing:
        return "it is marked missing"
    if not path.is_file():
        return "its file is missing"
    if path.stat().st_size != c.size_bytes:
        return f"its file has {path.stat().st_size} bytes, {c.size_bytes} recorded"
    if hash and file_sha256(path) != (c.size_bytes, c.sha256):
        return "its file does not match the recorded sha256"
    return None


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
    from agentrt.sessions.catalog import require_store
    from agentrt.sessions.locks import remove_session_dir, session_lock

    settings = resolve_settings(ctx)
    layout = layout_of(settings)
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
        with session_lock(layout, info.id, info.name, create=False):
            files = store.delete_session(info, keep_checkpoints=keep_checkpoints)
            for file in files:
                layout.resolve(file).unlink(missing_ok=True)
            remove_session_dir(layout, info.id)
    if keep_checkpoints:
        kept = count(len(checkpoints), "checkpoint file")
        click.echo(f"deleted session {info.name!r}; kept {kept}:")
        for c in checkpoints:
            click.echo(f"  {layout.resolve(c.file)}")
        click.echo("(unreferenced files are removed by the next `agentrt sessions gc`)")
    else:
        handed = len(checkpoints) - len(files)
        forks = (
            f"; {count(handed, 'checkpoint')} that forks build on now belong to them"
            if handed
            else ""
        )
        click.echo(
            f"deleted session {info.name!r} and {count(len(files), 'checkpoint file')}{forks}"
        )


def verified_model(
    layout: SessionLayout, model_dir: Path, ckpt: CheckpointInfo, rows: list[CheckpointInfo]
) -> str:
    """Check that checkpoint `ckpt` (with its chain among `rows`) restores into the model in
    `model_dir`; its folder name.

    The model is loaded on the CPU in the dtype the checkpoint was saved with; any other
    difference (config, weights, tokenizer, DMS config) raises CheckpointError naming it.
    """
    import torch

    from agentrt.models.resolve import load_resolved
    from agentrt.sessions import load_chain, model_fingerprint
    from agentrt.sessions.checkpoint import read_header

    path = layout.resolve(ckpt.file)
    dtype = getattr(torch, read_header(path).get("dtype", "float32"))
    model = load_resolved(model_dir, device="cpu", dtype=dtype, home=layout.home)
    fingerprint = model_fingerprint(model, model_dir=model.source_dir, cache_dir=layout.home)
    load_chain(layout, rows, ckpt, fingerprint=fingerprint)
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
    from agentrt.sessions.archive import create_copy, fork_copy

    settings = resolve_settings(ctx)
    layout = layout_of(settings)
    from agentrt.sessions.catalog import require_store

    with catalog(settings, readonly=True) as store:  # an unknown NAME writes nothing
        store = require_store(store, name)
        check = None
        if model_dir is not None:
            rows = store.lineage(name)
            check = lambda ckpt: verified_model(layout, model_dir, ckpt, rows)  # noqa: E731
        copy, ckpt = fork_copy(store, layout, name, new, model=check)
        created = create_copy(store, layout, copy)
    click.echo(
        f"forked {copy.row['name']!r} into {created.name!r} ({created.id[:8]}) at {ckpt.tokens} tokens"
    )


# -- gc ----------------------------------------------------------------------------------


class _Report:
    """Counts and prints what gc did (or would do, with --dry-run)."""

    def __init__(self, dry_run: bool) -> None:
        self.dry_run = dry_run
        self.counts: dict[str, int] = defaultdict(int)
        self.freed = 0

    def say(self, kind: str, text: str, freed: int) -> None:
        if kind in ("kept", "skipped"):  # notes, not actions
            click.echo(text)
            return
        self.counts[kind] += 1
        self.freed += freed
        click.echo(f"{'would ' if self.dry_run else ''}{text}")


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
    from agentrt.sessions.gc import collect_files, mark_missing, prune

    settings = resolve_settings(ctx)
    layout = layout_of(settings)
    report = _Report(dry_run)
    with catalog(settings, readonly=True) as store:
        if store is None:
            click.echo("nothing to collect: no sessions saved yet")
            return
        try:
            mark_missing(store, layout, verify=verify, dry_run=dry_run, say=report.say)
            if keep is not None:
                prune(
                    store,
                    layout,
                    keep,
                    dry_run=dry_run,
                    say=report.say,
                    when=lambda c: local_time(c.created_at),
                )
            collect_files(store, layout, dry_run=dry_run, say=report.say, size_text=human_bytes)
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


__all__ = ["fork", "gc", "ls", "rm", "sessions", "show", "tag", "untag"]
