"""One local Ray cluster (2 CPUs, no dashboard) for every cluster test; skipped without Ray.

Starting Ray and its workers costs seconds, so the cluster is shared by the whole folder;
each test starts its own actors and stops them. The catalog is the private PostgreSQL of
`.ci/run` (AGENTRT_TEST_PG) when there is one, else a SQLite file the processes share.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_URL = os.environ.get("AGENTRT_TEST_PG")


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[object]:
    """`ray.init(num_cpus=2)` once; shut down at the end."""
    ray = pytest.importorskip(
        "ray", reason='Ray is not installed (pip install -e ".[ray]"); cluster tests skipped'
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def cluster_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny chat model as a folder the replicas load."""
    from tests.agent.helpers import save_chat_model

    return save_chat_model(tmp_path_factory.mktemp("cluster-model") / "tiny", "smollm2")


def catalog_url(folder: Path) -> str:
    """PostgreSQL when CI provides it, else a SQLite file in `folder` (one machine)."""
    return PG_URL or f"sqlite:///{folder / 'catalog.db'}"


def unique(prefix: str) -> str:
    """A session name no earlier run left in a shared PostgreSQL catalog."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
