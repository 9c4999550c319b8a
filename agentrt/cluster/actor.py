"""The Ray side: start (or join) a cluster and run `Replica`s as named actors.

The only module of agentrt that imports `ray` at module level; it is imported when a
command runs with `--ray`, never otherwise.
"""

from __future__ import annotations

from typing import Any

from agentrt.cluster.config import ClusterConfig, ReplicaConfig
from agentrt.cluster.replica import Replica
from agentrt.errors import ConfigError

try:
    import ray
except ImportError as err:  # the optional extra is not installed
    raise ConfigError(
        "--ray needs the Ray package, which is not installed",
        hint='pip install "agentrt[ray]"',
    ) from err


class ReplicaActor(Replica):
    """A Replica that also reports the Ray node it runs on."""

    def node_id(self) -> str:
        """The Ray node id of this actor's process."""
        return ray.get_runtime_context().get_node_id()


def connect(config: ClusterConfig) -> None:
    """ray.init for `config.address` (None/"local": a new local cluster), once per process."""
    if ray.is_initialized():
        return
    address = None if config.address in (None, "local") else config.address
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    options.update(config.ray_init)
    try:
        ray.init(address=address, **options)
    except ConnectionError as err:
        raise ConfigError(
            f"cannot reach the Ray cluster at {config.address!r}: {err}",
            hint="start one with `ray start --head`, or pass --ray without an address for a local one",
        ) from None


def start_replica(name: str, config: ClusterConfig, replica: ReplicaConfig) -> Any:
    """Start one named replica actor (it loads the model in its own process)."""
    cls = ray.remote(ReplicaActor)
    return cls.options(
        name=name,
        num_cpus=config.cpus_per_replica,
        num_gpus=config.gpus_per_replica,
        max_concurrency=config.max_concurrency,
        max_restarts=0,  # a dead replica stays dead: the router reopens its sessions elsewhere
    ).remote(name, replica)


def start_app_replica(
    name: str, config: ClusterConfig, options: dict[str, Any], host: str | None = None
) -> Any:
    """Start one named `AppReplica` actor (model and HTTP app load in its own process)."""
    from agentrt.cluster.app_replica import AppReplica

    cls = ray.remote(AppReplica)
    return cls.options(
        name=name,
        num_cpus=config.cpus_per_replica,
        num_gpus=config.gpus_per_replica,
        max_concurrency=4,  # url/ping/stop; requests arrive over HTTP, not as actor calls
        max_restarts=0,
    ).remote(name, config.replica, options, host)


def call(handle: Any, method: str, *args: Any) -> Any:
    """Run one actor method and wait for it; AgentRTErrors come back as themselves.

    Raises `ActorGone` when the actor died (before or during the call).
    """
    return gather([getattr(handle, method).remote(*args)])[0]


def gather(refs: list[Any]) -> list[Any]:
    """ray.get on many calls; AgentRTErrors come back as themselves, a dead actor as ActorGone."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayActorError as err:
        raise ActorGone(str(err)) from None
    except ray.exceptions.RayTaskError as err:
        cause = err.cause
        if isinstance(cause, Exception) and not isinstance(cause, ray.exceptions.RayError):
            raise cause from None
        raise


def kill(handle: Any) -> None:
    """Stop an actor now (no cleanup runs in it)."""
    ray.kill(handle, no_restart=True)


class ActorGone(Exception):
    """A replica actor is dead (killed, crashed, or its node left the cluster)."""
