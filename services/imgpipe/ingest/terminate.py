"""Ending a task from ingest's side: cancel requests and the deadline reaper.

Both write the terminal state and queue the TaskResult (through the outbox) in one transaction,
so the callback service hears of it, and stages, which watch the result topic, skip the task at
their next boundary.
"""

from __future__ import annotations

import logging
import threading
import uuid
from datetime import UTC, datetime

from prometheus_client import Counter
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from imgpipe.ingest import outbox
from imgpipe.ingest.results import task_result
from imgpipe.store.models import TERMINAL_STATES, Task, TaskState

log = logging.getLogger(__name__)

REAPED = Counter("imgpipe_tasks_reaped_total", "Tasks failed with `timeout` by the deadline reaper")
_REAPER_LOCK_ID = 0x1A6E_0001  # pg advisory lock: one reaper at a time across replicas


def finish(
    session: Session, task: Task, state: TaskState, code: str, message: str, result_topic: str
) -> None:
    """Move a non-terminal task to `state` and queue its TaskResult in the caller's transaction."""
    now = datetime.now(UTC)
    task.state = state
    task.error_code = code
    task.error_message = message
    task.completed_at = now
    task.processing_ms = int((now - task.created_at).total_seconds() * 1000)
    result = task_result(task)
    outbox.enqueue(session, result_topic, str(task.id), result.SerializeToString())


def request_cancel(
    sessions: sessionmaker[Session], result_topic: str, tenant_id: str, task_id: uuid.UUID
) -> Task | None:
    """Cancel the task if it has not ended; returns it (None when unknown to this tenant)."""
    with sessions.begin() as session:
        task = session.scalars(
            select(Task).where(Task.id == task_id, Task.tenant_id == tenant_id).with_for_update()
        ).one_or_none()
        if task is None:
            return None
        task.cancel_requested = True
        if task.state not in TERMINAL_STATES:
            finish(session, task, TaskState.CANCELED, "canceled", "canceled by the client", result_topic)
        return task


def reap_overdue(sessions: sessionmaker[Session], result_topic: str, limit: int = 500) -> int:
    """Fail tasks past their deadline with `timeout`; returns how many."""
    with sessions.begin() as session:
        if not session.execute(
            text("SELECT pg_try_advisory_xact_lock(:id)"), {"id": _REAPER_LOCK_ID}
        ).scalar():
            return 0  # another replica is reaping
        overdue = session.scalars(
            select(Task)
            .where(
                Task.state.in_([TaskState.QUEUED, TaskState.PROCESSING]), Task.deadline_at < datetime.now(UTC)
            )
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
        for task in overdue:
            finish(
                session, task, TaskState.FAILED, "timeout", "the task overran its time limit", result_topic
            )
    REAPED.inc(len(overdue))
    return len(overdue)


def run_reaper(
    sessions: sessionmaker[Session], result_topic: str, interval_seconds: float, stop: threading.Event
) -> None:
    """Reap every `interval_seconds` until `stop`."""
    while not stop.wait(interval_seconds):
        try:
            while reap_overdue(sessions, result_topic) > 0:
                pass
        except Exception:
            log.exception("deadline reaper failed; will retry")
