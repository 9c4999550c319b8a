"""Persistence of agentrt sessions: catalog models, migrations, database setup, store, checkpoints.

Names are imported on first use (PEP 562), so `import agentrt.sessions.checkpoint` — what the
engine needs to swap and save — never pulls in SQLAlchemy or Alembic (a GPU box may lack them),
and nothing here imports torch, textual or rich at package import.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "Base": "agentrt.sessions.models",
    "CHECKPOINT_KINDS": "agentrt.sessions.models",
    "CheckpointFileInfo": "agentrt.sessions.checkpoint",
    "CheckpointInfo": "agentrt.sessions.records",
    "DatabaseStatus": "agentrt.sessions.database",
    "FORMAT_VERSION": "agentrt.sessions.checkpoint",
    "FULL_VERSION": "agentrt.sessions.checkpoint",
    "CheckpointPolicy": "agentrt.sessions.retention",
    "load_chain": "agentrt.sessions.chain",
    "Fingerprint": "agentrt.sessions.fingerprint",
    "LoadedCheckpoint": "agentrt.sessions.checkpoint",
    "MESSAGE_ROLES": "agentrt.sessions.models",
    "MessageInfo": "agentrt.sessions.records",
    "Placement": "agentrt.sessions.placements",
    "PlacementStore": "agentrt.sessions.placements",
    "RUN_ITEM_STATUSES": "agentrt.sessions.models",
    "RUN_STATUSES": "agentrt.sessions.models",
    "RunInfo": "agentrt.sessions.records",
    "RunItemInfo": "agentrt.sessions.records",
    "RunStore": "agentrt.sessions.runs",
    "SESSION_STATUSES": "agentrt.sessions.models",
    "SessionInfo": "agentrt.sessions.records",
    "SessionRef": "agentrt.sessions.store",
    "SessionStore": "agentrt.sessions.store",
    "UPGRADE_COMMAND": "agentrt.sessions.db_errors",
    "WrittenFile": "agentrt.sessions.atomic",
    "alembic_config": "agentrt.sessions.database",
    "current_revision": "agentrt.sessions.database",
    "database_status": "agentrt.sessions.database",
    "downgrade": "agentrt.sessions.database",
    "file_sha256": "agentrt.sessions.atomic",
    "head_revision": "agentrt.sessions.database",
    "load_checkpoint": "agentrt.sessions.checkpoint",
    "make_engine": "agentrt.sessions.database",
    "model_fingerprint": "agentrt.sessions.fingerprint",
    "open_catalog": "agentrt.sessions.database",
    "open_placements": "agentrt.sessions.placements",
    "redact_url": "agentrt.sessions.db_errors",
    "save_checkpoint": "agentrt.sessions.checkpoint",
    "sqlite_path": "agentrt.sessions.database",
    "stale_temp_files": "agentrt.sessions.atomic",
    "translate_errors": "agentrt.sessions.db_errors",
    "upgrade": "agentrt.sessions.database",
    "write_atomic": "agentrt.sessions.atomic",
}


def __getattr__(name: str) -> Any:
    """Import an exported name from its module on first use."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'agentrt.sessions' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(_EXPORTS)


__all__ = sorted(_EXPORTS)  # noqa: PLE0605
