"""`agentrt resume NAME`: reopen a saved session, optionally prefill a prompt, generate, save.

A minimal front end until `agentrt chat` and `agentrt run` exist: the prompt is fed as
plain text (no chat template), the generated text streams to stdout, and status lines go
to stderr so the output can be piped. torch and transformers are imported inside the command.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from agentrt.cli.options import (
    kv_dtype_option,
    resolve_settings,
    setting_source,
    settings_options,
)
from agentrt.cli.sessions_archive import catalog, human_bytes
from agentrt.errors import ModelLoadError

if TYPE_CHECKING:
    from agentrt.sessions import SessionInfo


def pick_model(ctx: click.Context, info: SessionInfo, default: str | None) -> str:
    """The model to serve a session with: --model, else its recorded folder, else the default
    (AGENTRT_MODEL, else smollm2-135m-instruct).

    A recorded model that is not a folder on this machine (an imported session, a moved
    folder, a model built in memory) needs --model; the checkpoint's fingerprint check then
    refuses a model that differs from the one the session was saved with.
    """
    if default is not None and setting_source(ctx, "model") == "flag":
        return default
    if info.model and Path(info.model).expanduser().is_dir():
        return str(Path(info.model).expanduser())
    if default is not None:
        return default
    raise ModelLoadError(
        f"session {info.name!r} was saved with model {info.model!r}, which is not a folder here",
        hint="pass --model PATH with the model the session was saved with",
    )


def stored_kv_dtype(store: Any, home: Path, session_id: str, checkpoint: int | None) -> str | None:
    """The dtype K/V are stored in by the checkpoint resume restores (checkpoint N, else the
    newest present one); None when it cannot be read (the restore then reports why)."""
    from agentrt.errors import CheckpointError
    from agentrt.sessions.checkpoint import read_header
    from agentrt.settings import KV_DTYPES

    rows = store.checkpoints(session_id)
    if checkpoint is not None:
        rows = rows[checkpoint - 1 : checkpoint]
    present = [r for r in rows if not r.missing]
    if not present:
        return None
    try:
        dtype = read_header(home / present[-1].file).get("dtype")
    except CheckpointError:
        return None
    return dtype if dtype in KV_DTYPES else None


@click.command()
@click.argument("name")
@click.option(
    "--prompt", "-p", default=None, help="Text to feed before generating (raw, no chat template)."
)
@click.option(
    "--max-new-tokens",
    "-n",
    type=click.IntRange(min=0),
    default=128,
    show_default=True,
    help="Tokens to generate (0: only feed the prompt).",
)
@click.option(
    "--temperature",
    "-t",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Sampling temperature (0 = greedy). The session's sampler state is restored.",
)
@click.option(
    "--checkpoint",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Restore checkpoint N (as numbered by `agentrt sessions show`) instead of the newest.",
)
@click.option(
    "--kv-budget",
    default="1GiB",
    show_default=True,
    metavar="SIZE",
    envvar="AGENTRT_KV_BUDGET",
    show_envvar=True,
    help="KV pool size, e.g. 512MiB.",
)
@kv_dtype_option
@settings_options
@click.pass_context
def resume(
    ctx: click.Context,
    name: str,
    prompt: str | None,
    max_new_tokens: int,
    temperature: float,
    checkpoint: int | None,
    kv_budget: str,
    kv_dtype: str | None,
    **_: Any,
) -> None:
    """Reopen saved session NAME, feed --prompt, stream the continuation to stdout, save.

    The model is --model if given, else the folder recorded with the session, else
    AGENTRT_MODEL. K/V are stored in --kv-dtype if given, else in the dtype the checkpoint
    holds them in (so a session saved with fp32 K/V continues exactly).
    The newest checkpoint is verified (size, sha256, model fingerprint) before anything is
    restored. A new checkpoint is written only when tokens were fed or generated; Ctrl-C
    leaves the previous checkpoint as it was.
    """
    from agentrt.engine import Engine
    from agentrt.engine.detokenize import IncrementalDetokenizer
    from agentrt.sessions.catalog import require_store

    settings = resolve_settings(ctx)
    with catalog(settings, readonly=True) as store:
        info = require_store(store, name).get_session(name)
        if kv_dtype is None:
            kv_dtype = stored_kv_dtype(store, settings.home, info.id, checkpoint)
    model = pick_model(ctx, info, settings.model)
    engine = Engine.from_pretrained(
        model,
        device=settings.device,
        home=settings.home,
        db=settings.db_url,
        kv_budget=kv_budget,
        kv_dtype=kv_dtype,
    )
    try:
        tok = engine.tokenizer
        if tok is None:
            raise ModelLoadError(
                f"the model in {model} has no tokenizer", hint="resume needs one to read text"
            )
        session = engine.open_session(info.id, checkpoint=checkpoint)
        turns: list[tuple[str, str, int, int]] = []  # (role, text, token_start, token_end)
        if prompt:
            ids = tok.encode(prompt, add_special_tokens=False)
            start = len(session.tokens) + (session.pending_token is not None)
            session.prefill(ids)
            turns.append(("user", prompt, start, start + len(ids)))
        if max_new_tokens:
            start = len(session.tokens) + (session.pending_token is not None)
            detok, count = IncrementalDetokenizer(tok), 0
            for token in session.generate(max_new_tokens, temperature=temperature):
                count += 1
                click.echo(detok.push(token), nl=False)
                sys.stdout.flush()
            click.echo(detok.flush())
            turns.append(("assistant", detok.text, start, start + count))
        if not session.dirty:
            click.echo(f"session {info.name!r} unchanged; nothing saved", err=True)
            return
        row = engine.save(session)
        store = engine.persistence.store
        for role, text, start, end in turns:
            store.add_message(info.id, role, text, token_start=start, token_end=end)
        store.set_status(info.id, "saved")
        click.echo(
            f"saved session {info.name!r}: {row.tokens} tokens, checkpoint "
            f"{human_bytes(row.size_bytes)}, CR {row.compression_ratio:.2f}",
            err=True,
        )
    finally:
        engine.close()


__all__ = ["pick_model", "resume"]
