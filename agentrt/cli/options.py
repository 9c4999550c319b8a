"""Shared CLI options: one decorator per setting, each mirrored by an `AGENTRT_*` variable.

Precedence is flag > environment > default. `envvar=` documents the mirror in `--help`
and lets click report the source; `resolve_settings(ctx)` hands only flag values to
`agentrt.settings.load_settings`, which reads the environment, applies the defaults and
validates, so every command resolves settings the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from agentrt.settings import (
    ENV_DB,
    ENV_DEVICE,
    ENV_HOME,
    ENV_KV_DTYPE,
    ENV_MODEL,
    KV_DTYPES,
    Settings,
    load_settings,
)

F = TypeVar("F", bound=Callable[..., Any])

home_option = click.option(
    "--home",
    envvar=ENV_HOME,
    show_envvar=True,
    metavar="DIR",
    default=None,
    help="Folder of agentrt state (database, checkpoints). Default: ~/.agentrt.",
)
db_option = click.option(
    "--db",
    envvar=ENV_DB,
    show_envvar=True,
    metavar="URL",
    default=None,
    help="SQLAlchemy URL of the metadata database. Default: sqlite:///HOME/agentrt.db.",
)
model_option = click.option(
    "--model",
    envvar=ENV_MODEL,
    show_envvar=True,
    metavar="PATH_OR_ID",
    default=None,
    help="Model to serve: a known name (agentrt models ls), a folder or a hub id. "
    "Default: smollm2-135m-instruct.",
)
dms_option = click.option(
    "--dms",
    "dms_mode",
    type=click.Choice(["on", "off"]),
    default="on",
    show_default=True,
    help="off: serve the model dense (no DMS adapters, no eviction).",
)
device_option = click.option(
    "--device",
    envvar=ENV_DEVICE,
    show_envvar=True,
    metavar="DEVICE",
    default=None,
    help="auto, cpu, cuda or cuda:N. Default: auto.",
)


kv_budget_option = click.option(
    "--kv-budget",
    default="1GiB",
    show_default=True,
    metavar="SIZE",
    envvar="AGENTRT_KV_BUDGET",
    show_envvar=True,
    help="KV pool size, e.g. 512MiB.",
)

kv_dtype_option = click.option(
    "--kv-dtype",
    type=click.Choice(KV_DTYPES, case_sensitive=False),
    default=None,
    envvar=ENV_KV_DTYPE,
    show_envvar=True,
    help="Dtype K/V are stored in (pool, swap, checkpoints). auto: bfloat16 where the model "
    "computes in fp32/bf16 and the device supports it (half the bytes of fp32); model: the "
    "model's dtype. Default: auto.",
)


def settings_options(func: F) -> F:
    """Add --home, --db, --model and --device to a command; read them with `resolve_settings`."""
    for option in (device_option, model_option, db_option, home_option):
        func = option(func)
    return func


def setting_source(ctx: click.Context, name: str) -> str:
    """Where the value of shared option `name` came from: "flag", "env" or "default"."""
    source = ctx.get_parameter_source(name)
    if source is ParameterSource.COMMANDLINE:
        return "flag"
    if source is ParameterSource.ENVIRONMENT:
        return "env"
    return "default"


def resolve_settings(ctx: click.Context) -> Settings:
    """Resolve `Settings` from the shared options of `ctx` (raises ConfigError if invalid).

    Only values given as flags are passed on; for the rest `load_settings` reads the
    environment itself, so its messages name the variable a bad value came from.
    """
    given = {
        name: ctx.params.get(name)
        for name in ("home", "db", "model", "device")
        if name in ctx.params and setting_source(ctx, name) == "flag"
    }
    return load_settings(**given)


__all__ = [
    "db_option",
    "dms_option",
    "device_option",
    "home_option",
    "kv_budget_option",
    "kv_dtype_option",
    "model_option",
    "resolve_settings",
    "setting_source",
    "settings_options",
]


def ray_options(f: F) -> F:
    """`--ray [ADDRESS]` and `--replicas N`: scale out over a Ray cluster (docs/SCALE_OUT.md)."""
    f = click.option(
        "--replicas",
        type=click.IntRange(min=1),
        default=2,
        show_default=True,
        help="Engine replicas to start with --ray (one per GPU, or per CPU worker).",
    )(f)
    return click.option(
        "--ray",
        "ray_address",
        is_flag=False,
        flag_value="local",
        default=None,
        metavar="[ADDRESS|auto]",
        help="Run on Ray: alone, a new local cluster; `auto` or host:port joins a running one.",
    )(f)
