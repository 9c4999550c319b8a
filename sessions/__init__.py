"""Persistence of agentrt sessions: catalog models, migrations, database setup and store.

Importing this package loads SQLAlchemy and Alembic but never torch, textual or rich.
"""

from agentrt.sessions.database import (
    DatabaseStatus,
    alembic_config,
    current_revision,
    database_status,
    downgrade,
    head_revision,
    make_engine,
    open_catalog,
    sqlite_path,
    upgrade,
)
from agentrt.sessions.db_errors import UPGRADE_COMMAND, redact_url, translate_errors
from agentrt.sessions.models import (
    CHECKPOINT_KINDS,
    MESSAGE_ROLES,
    RUN_ITEM_STATUSES,
    RUN_STATUSES,
    SESSION_STATUSES,
    Base,
)
from agentrt.sessions.records import CheckpointInfo, MessageInfo, RunInfo, RunItemInfo, SessionInfo
from agentrt.sessions.runs import RunStore
from agentrt.sessions.store import SessionRef, SessionStore

__all__ = [
    "CHECKPOINT_KINDS",
    "MESSAGE_ROLES",
    "RUN_ITEM_STATUSES",
    "RUN_STATUSES",
    "SESSION_STATUSES",
    "UPGRADE_COMMAND",
    "Base",
    "CheckpointInfo",
    "DatabaseStatus",
    "MessageInfo",
    "RunInfo",
    "RunItemInfo",
    "RunStore",
    "SessionInfo",
    "SessionRef",
    "SessionStore",
    "alembic_config",
    "current_revision",
    "database_status",
    "downgrade",
    "head_revision",
    "make_engine",
    "open_catalog",
    "redact_url",
    "sqlite_path",
    "translate_errors",
    "upgrade",
]
