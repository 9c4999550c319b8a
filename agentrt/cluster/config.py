"""Frozen, validated settings of a cluster and of each engine replica in it."""

from __future__ import annotations

from dataclasses import dataclass, field

from agentrt.errors import ConfigError


@dataclass(frozen=True)
class ReplicaConfig:
    """How every replica builds its Engine and where it keeps checkpoints.

    `store` None: `home` is on a filesystem every replica mounts (NFS, a shared disk, or one
    machine), and all replicas read and write its `checkpoints/`. `store` an fsspec URL
    (`s3://bucket/agentrt`, `file:///mnt/x`): each replica keeps a local copy under
    `home/replicas/<name>` and pushes every checkpoint blob to the store after writing it;
    a replica that opens a session pulls its newest blob first.
    """

    model: str | None
    db: str
    home: str
    device: str = "cpu"
    kv_budget: str | int = "1GiB"
    kv_dtype: str | None = None  # K/V storage dtype; None: the driver's AGENTRT_KV_DTYPE
    num_blocks: int | None = None
    block_size: int = 16
    dms: str | None = None  # None: the model's own; "off": dense
    store: str | None = None
    save_every_turns: int = 1  # 0: only on moves and shutdown

    def __post_init__(self) -> None:
        if self.kv_dtype is None:  # resolved here, so every replica stores K/V alike
            from agentrt.settings import kv_dtype_setting

            object.__setattr__(self, "kv_dtype", kv_dtype_setting())
        if isinstance(self.save_every_turns, bool) or self.save_every_turns < 0:
            raise ConfigError(
                f"save_every_turns={self.save_every_turns!r} must be 0 (never) or a positive count",
                hint="1 saves after every turn: a replica failure then loses at most the turn in flight",
            )
        if self.db.startswith("sqlite") and ":memory:" in self.db:
            raise ConfigError(
                "replicas cannot share an in-memory SQLite catalog",
                hint="use a PostgreSQL URL (--db / AGENTRT_DB), or a SQLite file on one machine",
            )
        if self.dms not in (None, "off"):
            raise ConfigError(f"dms={self.dms!r} must be None or 'off'")


@dataclass(frozen=True)
class ClusterConfig:
    """How many replicas to start on which Ray cluster, and their resources."""

    replica: ReplicaConfig
    replicas: int = 2
    address: str | None = None  # None or "local": a new local cluster; "auto" or host:port: join
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0
    max_concurrency: int = 32  # requests one replica runs at once (they share engine steps)
    name_prefix: str = "replica"
    ray_init: dict = field(default_factory=dict, compare=False)  # extra ray.init() arguments

    def __post_init__(self) -> None:
        if (
            isinstance(self.replicas, bool)
            or not isinstance(self.replicas, int)
            or self.replicas < 1
        ):
            raise ConfigError(
                f"--replicas {self.replicas!r} must be a whole number ≥ 1",
                hint="one replica per GPU (or per CPU worker)",
            )
        if self.cpus_per_replica < 0 or self.gpus_per_replica < 0:
            raise ConfigError("cpus_per_replica and gpus_per_replica must not be negative")
        if self.max_concurrency < 1:
            raise ConfigError(f"max_concurrency={self.max_concurrency} must be ≥ 1")

    def replica_names(self) -> list[str]:
        """The actor names of the replicas, in start order."""
        return [f"{self.name_prefix}-{i}" for i in range(self.replicas)]
