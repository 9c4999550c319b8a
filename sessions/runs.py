"""`RunStore`: batch runs (`agentrt run task.yaml`) and their items in the catalog."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from agentrt.errors import SessionError
from agentrt.sessions.db_errors import translate_errors
from agentrt.sessions.models import RUN_ITEM_STATUSES, RUN_STATUSES, RunItemRow, RunRow, utcnow
from agentrt.sessions.records import RunInfo, RunItemInfo

_FINAL_ITEM_STATUSES = tuple(s for s in RUN_ITEM_STATUSES if s not in ("pending", "running"))
_FINAL_RUN_STATUSES = tuple(s for s in RUN_STATUSES if s != "running")


class RunStore:
    """Batch runs and their per-input items; reached as `SessionStore.runs`."""

    def __init__(self, sessionmaker: sessionmaker[Session]) -> None:
        self._sessionmaker = sessionmaker

    def create_run(
        self, task_file: str, task_name: str, model: str, options: Mapping[str, Any] | None = None
    ) -> RunInfo:
        """Record a run that starts now (status "running")."""
        with self._tx("recording a run") as s:
            row = RunRow(
                task_file=task_file,
                task_name=task_name,
                model=model,
                status="running",
                started_at=utcnow(),
                options=dict(options or {}),
            )
            s.add(row)
            s.flush()
            return RunInfo.from_row(row)

    def finish_run(self, run_id: str, status: str = "done") -> RunInfo:
        """Close a run as done, failed or cancelled."""
        _check(status, _FINAL_RUN_STATUSES, "final run status")
        with self._tx("finishing a run") as s:
            row = self._run(s, run_id)
            row.status = status
            row.finished_at = utcnow()
            s.flush()
            return RunInfo.from_row(row)

    def get_run(self, run_id: str) -> RunInfo:
        """The run with this id."""
        with self._tx("reading a run") as s:
            return RunInfo.from_row(self._run(s, run_id))

    def add_run_item(
        self, run_id: str, input_id: str, *, session_id: str | None = None, status: str = "running"
    ) -> RunItemInfo:
        """Record one input of a run (started now unless `status="pending"`)."""
        _check(status, RUN_ITEM_STATUSES, "run item status")
        duplicate = f"run {run_id} already has an item for input {input_id!r}"
        with self._tx("recording a run item", conflict=duplicate) as s:
            run = self._run(s, run_id)
            exists = s.scalar(
                select(RunItemRow.id).where(
                    RunItemRow.run_id == run.id, RunItemRow.input_id == input_id
                )
            )
            if exists is not None:
                raise SessionError(duplicate, hint="input ids must be unique within a task file")
            row = RunItemRow(
                run_id=run.id,
                input_id=input_id,
                status=status,
                session_id=session_id,
                started_at=None if status == "pending" else utcnow(),
            )
            s.add(row)
            s.flush()
            return RunItemInfo.from_row(row)

    def finish_run_item(
        self,
        item_id: str,
        *,
        status: str = "done",
        output: Any = None,
        error: str | None = None,
        session_id: str | None = None,
    ) -> RunItemInfo:
        """Store an item's result (done/skipped) or error (failed)."""
        _check(status, _FINAL_ITEM_STATUSES, "final run item status")
        with self._tx("finishing a run item") as s:
            row = s.get(RunItemRow, item_id)
            if row is None:
                raise SessionError(f"no run item with id {item_id!r}")
            row.status = status
            row.output = output
            row.error = error
            if session_id is not None:
                row.session_id = session_id
            row.finished_at = utcnow()
            if row.started_at is None:
                row.started_at = row.finished_at
            s.flush()
            return RunItemInfo.from_row(row)

    def run_items(self, run_id: str) -> list[RunItemInfo]:
        """The items of a run, ordered by input id."""
        with self._tx("reading run items") as s:
            run = self._run(s, run_id)
            query = (
                select(RunItemRow).where(RunItemRow.run_id == run.id).order_by(RunItemRow.input_id)
            )
            return [RunItemInfo.from_row(row) for row in s.scalars(query)]

    @contextmanager
    def _tx(self, action: str, *, conflict: str | None = None) -> Iterator[Session]:
        with translate_errors(action, conflict=conflict), self._sessionmaker.begin() as s:
            yield s

    @staticmethod
    def _run(s: Session, run_id: str) -> RunRow:
        row = s.get(RunRow, run_id)
        if row is None:
            raise SessionError(f"no run with id {run_id!r}")
        return row


def _check(value: str, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise SessionError(f"unknown {what} {value!r}; expected one of {', '.join(allowed)}")


__all__ = ["RunStore"]
