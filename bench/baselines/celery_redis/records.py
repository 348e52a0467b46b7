"""Task rows in imgpipe's own `tasks` table, written the way the old system wrote its task records:
the submitter inserts the row, each worker task updates it in place as it starts and ends a stage.

A terminal row is never touched again (as imgpipe's projector does), so a redelivered Celery task
cannot move a finished task back to `processing`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from imgpipe.ingest.results import result_columns
from imgpipe.ingest.settings import IngestSettings
from imgpipe.ingest.tenants import create_tenant
from imgpipe.store.models import TERMINAL_STATES, CallbackStatus, Task, TaskState, Tenant
from imgpipe.v1 import task_pb2

from .protocol import STAGES

TENANT_ID = "celery-baseline"

# The deadline recorded on the row: ingest's own default time limit, so rows look like imgpipe's.
TIME_LIMIT = timedelta(seconds=IngestSettings.model_fields["task_time_limit_seconds"].default)


def ensure_tenant(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        if session.get(Tenant, TENANT_ID) is None:
            create_tenant(session, TENANT_ID, "Celery + Redis baseline (benchmarks)")


def insert_task(
    sessions: sessionmaker[Session],
    task_id: uuid.UUID,
    prompt: str,
    source_object_key: str,
    callback_url: str | None,
    batched: bool,
) -> None:
    now = datetime.now(UTC)
    with sessions.begin() as session:
        session.add(
            Task(
                id=task_id,
                tenant_id=TENANT_ID,
                state=TaskState.QUEUED,
                progress=0.0,
                prompt=prompt,
                source_object_key=source_object_key,
                callback_url=callback_url,
                callback_mode=("batched" if batched else "immediate") if callback_url else None,
                include_inline_result=False,
                callback_status=CallbackStatus.PENDING if callback_url else CallbackStatus.NOT_REQUIRED,
                metadata_={},
                cancel_requested=False,
                created_at=now,
                deadline_at=now + TIME_LIMIT,
            )
        )


def start_stage(sessions: sessionmaker[Session], task_id: str, stage: str) -> Task | None:
    """Mark the task processing at `stage` and return its row; None when it already ended."""
    now = datetime.now(UTC)
    with sessions.begin() as session:
        task = _open_task(session, task_id)
        if task is None:
            return None
        task.state = TaskState.PROCESSING
        task.stage = stage
        task.progress = max(task.progress, STAGES.index(stage) / len(STAGES))
        task.started_at = task.started_at or now
        task.updated_at = now
        return task


def succeed(sessions: sessionmaker[Session], task_id: str, result: task_pb2.Artifact) -> Task | None:
    """End the task `succeeded` with its result; returns the row, or None if it had already ended."""
    with sessions.begin() as session:
        task = _open_task(session, task_id)
        if task is None:
            return None
        _end(task, TaskState.SUCCEEDED)
        task.progress = 1.0
        for column, value in result_columns(result).items():
            setattr(task, column, value)
        return task


def fail(sessions: sessionmaker[Session], task_id: str, code: str, message: str, stage: str) -> Task | None:
    """End the task `failed` with an error code; returns the row, or None if it had already ended."""
    with sessions.begin() as session:
        task = _open_task(session, task_id)
        if task is None:
            return None
        _end(task, TaskState.FAILED)
        task.stage = stage
        task.error_stage = stage
        task.error_code = code
        task.error_message = message[:2000]
        return task


def set_callback_status(
    sessions: sessionmaker[Session], task_ids: Iterable[str], status: CallbackStatus
) -> None:
    ids = [uuid.UUID(task_id) for task_id in task_ids]
    if not ids:
        return
    with sessions.begin() as session:
        session.execute(
            update(Task)
            .where(Task.id.in_(ids), Task.callback_status != CallbackStatus.DELIVERED)
            .values(callback_status=status, updated_at=datetime.now(UTC))
        )


def _open_task(session: Session, task_id: str) -> Task | None:
    task = session.get(Task, uuid.UUID(task_id), with_for_update=True)
    return None if task is None or task.state in TERMINAL_STATES else task


def _end(task: Task, state: TaskState) -> None:
    now = datetime.now(UTC)
    task.state = state
    task.completed_at = now
    task.updated_at = now
    # processing time as the old record kept it: from the first stage's start to the end.
    task.processing_ms = int((now - (task.started_at or now)).total_seconds() * 1000)
