"""`agentrt serve`: the OpenAI-compatible HTTP server (fastapi and uvicorn load only here)."""

from __future__ import annotations

from typing import Any

import click

from agentrt.cli.options import (
    db_option,
    device_option,
    home_option,
    kv_budget_option,
    kv_dtype_option,
    ray_options,
)


@click.command("serve")
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default)."
)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option(
    "-m",
    "--model",
    envvar="AGENTRT_MODEL",
    show_envvar=True,
    metavar="PATH_OR_ID",
    default=None,
    help="Model folder or hub id. Default: AGENTRT_MODEL, else smollm2-135m-instruct.",
)
@click.option(
    "--api-key",
    envvar="AGENTRT_API_KEY",
    show_envvar=True,
    default=None,
    help="Require `Authorization: Bearer KEY` on every route.",
)
@kv_budget_option
@kv_dtype_option
@click.option(
    "--max-tokens-cap",
    type=click.IntRange(min=1),
    default=4096,
    show_default=True,
    help="Largest max_tokens a request may ask for.",
)
@click.option(
    "--request-timeout",
    type=click.FloatRange(min=1),
    default=600.0,
    show_default=True,
    help="Seconds one request may run.",
)
@click.option(
    "--queue-timeout",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds a request waits for KV budget before a 429.",
)
@device_option
@home_option
@db_option
@ray_options
def serve(**kw: Any) -> None:
    """Serve an OpenAI-compatible HTTP API whose conversations are persistent KV sessions."""
    import uvicorn

    if kw["ray_address"] is not None:
        app = _proxy_on_ray(kw)
        click.echo(
            f"agentrt: serving {kw['replicas']} replicas on http://{kw['host']}:{kw['port']}/v1",
            err=True,
        )
        uvicorn.run(app, host=kw["host"], port=kw["port"], log_level="warning")
        return
    from agentrt.engine import Engine
    from agentrt.server import create_app

    engine = Engine.from_pretrained(
        kw["model"],
        device=kw["device"],
        kv_budget=kw["kv_budget"],
        kv_dtype=kw["kv_dtype"],
        home=kw["home"],
        db=kw["db"],
    )
    app = create_app(
        engine,
        model_name=kw["model"] or "smollm2-135m-instruct",
        api_key=kw["api_key"],
        max_tokens_cap=kw["max_tokens_cap"],
        request_timeout=kw["request_timeout"],
        queue_timeout=kw["queue_timeout"],
    )
    click.echo(f"agentrt: serving on http://{kw['host']}:{kw['port']}/v1", err=True)
    uvicorn.run(app, host=kw["host"], port=kw["port"], log_level="warning")


def _proxy_on_ray(kw: dict[str, Any]) -> Any:
    """The affinity proxy in front of `--replicas` engine replicas on Ray (docs/SERVER.md)."""
    from agentrt.cluster import ClusterConfig, ReplicaConfig
    from agentrt.cluster.serve_proxy import proxy_on_ray
    from agentrt.errors import ConfigError
    from agentrt.settings import load_settings

    settings = load_settings(home=kw["home"], db=kw["db"], model=kw["model"], device=kw["device"])
    gpus = 0.0 if settings.device == "cpu" else 1.0
    if settings.device == "auto":
        import torch

        gpus = 1.0 if torch.cuda.is_available() else 0.0  # one GPU per replica when there are any
    if gpus and kw["ray_address"] == "local":
        import torch

        if torch.cuda.device_count() < kw["replicas"]:
            raise ConfigError(
                f"--replicas {kw['replicas']} needs one GPU each, but this machine has "
                f"{torch.cuda.device_count()}",
                hint="lower --replicas, serve on CPU (--device cpu), or join a larger cluster "
                "with --ray auto",
            )
    config = ClusterConfig(
        ReplicaConfig(
            model=settings.model,
            db=settings.db_url,
            home=str(settings.home),
            device="cuda" if gpus else "cpu",
            kv_budget=kw["kv_budget"],
            kv_dtype=kw["kv_dtype"],
        ),
        replicas=kw["replicas"],
        address=kw["ray_address"],
        gpus_per_replica=gpus,
    )
    options = {
        "model_name": kw["model"] or "smollm2-135m-instruct",
        "api_key": kw["api_key"],
        "max_tokens_cap": kw["max_tokens_cap"],
        "request_timeout": kw["request_timeout"],
        "queue_timeout": kw["queue_timeout"],
    }
    return proxy_on_ray(config, options, timeout=kw["request_timeout"] + 30)
