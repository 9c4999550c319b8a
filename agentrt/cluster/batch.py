"""`agentrt run TASK.yaml --ray`: the independent inputs of a task spread over replicas.

Inputs go round-robin to `replicas` shards; each shard runs the ordinary `TaskRunner` in
its own Ray actor (its own Engine) and writes its own JSONL; the driver then writes the
task's output with every record in input order, so the file is the one a run without Ray
writes (timings aside). Each shard is a run in the catalog, and all write to the same
catalog (`AGENTRT_DB`, PostgreSQL for several machines).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentrt.cluster.errors import ReplicaLost
from agentrt.errors import ConfigError

if TYPE_CHECKING:
    from agentrt.agent.task import TaskSpec


@dataclasses.dataclass(frozen=True)
class ShardResult:
    """What one shard did: its catalog run, failed and interrupted input ids, sessions."""

    run_id: str
    records: list[dict[str, Any]]  # the shard's JSONL records
    failed: list[str]
    sessions: list[str]
    interrupted: bool


class TaskShard:
    """One Engine running a slice of a task's inputs (the body of a Ray actor)."""

    def __init__(self, spec: TaskSpec, home: str, db: str, device: str | None) -> None:
        from agentrt.agent.runner import open_engine

        self.home, self.db = home, db
        self.engine = open_engine(spec, device=device, home=home, db=db)

    def run(self, spec: TaskSpec) -> ShardResult:
        """Run `spec` (its inputs are this shard's) and return the summary."""
        from agentrt.agent.runner import TaskRunner, read_records
        from agentrt.sessions import SessionStore, open_catalog

        store = SessionStore(open_catalog(self.db))
        with tempfile.TemporaryDirectory(prefix="agentrt-shard-") as tmp:
            spec = dataclasses.replace(spec, output=Path(tmp) / "shard.jsonl")
            try:
                summary = TaskRunner(spec, self.engine, store).run()
            finally:
                store.close()
            records = list(read_records(spec.output).values())
        return ShardResult(
            summary.run_id,
            records,
            summary.failed,
            summary.sessions,
            summary.interrupted,
        )

    def close(self) -> None:
        """Close the engine (sessions were checkpointed by the runner)."""
        self.engine.close()


def check_spreadable(spec: TaskSpec, *, resume: bool) -> None:
    """ConfigError unless the task's inputs are independent (one session per input)."""
    if spec.session.mode != "per_input":
        raise ConfigError(
            f"--ray spreads independent inputs, but {spec.path.name} keeps one conversation "
            f"for all of them (session.mode: {spec.session.mode})",
            hint="set session.mode: per_input (--set session.mode=per_input), or run it without --ray",
        )
    if resume:
        raise ConfigError(
            "--resume cannot be combined with --ray",
            hint="rerun the whole task with --ray, or resume it without --ray",
        )


def shards(spec: TaskSpec, n: int) -> list[TaskSpec]:
    """`spec` split round-robin into at most `n` non-empty specs."""
    parts = [spec.inputs[i::n] for i in range(n)]
    return [dataclasses.replace(spec, inputs=tuple(part)) for part in parts if part]


def merge(spec: TaskSpec, results: list[ShardResult]) -> int:
    """Write the task's output: every shard's records in the task's input order."""
    records = {r["id"]: r for res in results for r in res.records}
    spec.output.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps(records[i.id], ensure_ascii=False) + "\n" for i in spec.inputs if i.id in records
    ]
    spec.output.write_text("".join(lines), encoding="utf-8")
    return len(lines)


def run_on_ray(
    spec: TaskSpec,
    *,
    replicas: int,
    address: str | None,
    home: str,
    db: str,
    device: str | None = None,
    cpus_per_replica: float = 1.0,
    gpus_per_replica: float = 0.0,
) -> list[ShardResult]:
    """Run the task's inputs on `replicas` actors and write the merged JSONL."""
    from agentrt.cluster import actor
    from agentrt.cluster.config import ClusterConfig, ReplicaConfig
    from agentrt.settings import kv_dtype_setting

    # settings resolve here, not in the workers' environment: every shard stores K/V alike
    spec = dataclasses.replace(spec, kv_dtype=spec.kv_dtype or kv_dtype_setting())
    config = ClusterConfig(
        ReplicaConfig(model=spec.model, db=db, home=home, kv_dtype=spec.kv_dtype),
        replicas=replicas,
        address=address,
        cpus_per_replica=cpus_per_replica,
        gpus_per_replica=gpus_per_replica,
    )
    actor.connect(config)
    ray = actor.ray
    parts = shards(spec, config.replicas)
    cls = ray.remote(TaskShard).options(
        num_cpus=config.cpus_per_replica, num_gpus=config.gpus_per_replica
    )
    workers = [cls.remote(part, home, db, device) for part in parts]
    try:
        results = actor.gather([w.run.remote(p) for w, p in zip(workers, parts, strict=True)])
        actor.gather([w.close.remote() for w in workers])
    except actor.ActorGone as err:
        raise ReplicaLost(
            f"a replica running this task's inputs died ({err}); nothing was merged",
            hint="rerun the task: each input starts afresh in its own session",
        ) from None
    finally:
        for w in workers:
            actor.kill(w)
    merge(spec, results)
    return results
