"""The projector: stage events and terminal results, written into the task table in batches.

States only move forward: a terminal task is never touched again, progress never decreases, and
the first start time wins. So replays and out-of-order events are harmless.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC

from google.protobuf.message import DecodeError
from prometheus_client import Counter
from sqlalchemy import func, update
from sqlalchemy.orm import Session, sessionmaker

from imgpipe.contracts.payloads import stage_name
from imgpipe.contracts.registry import Registry, TopicKey
from imgpipe.runtime.consumer import PoisonMessage
from imgpipe.runtime.kafka import Forward, Record
from imgpipe.store.models import TERMINAL_STATES, Task, TaskState
from imgpipe.v1 import events_pb2, result_pb2, task_pb2

log = logging.getLogger(__name__)

PROJECTED = Counter("imgpipe_projector_updates_total", "Task updates written, by kind", ["kind"])

_RESULT_STATES = {
    task_pb2.TASK_STATE_SUCCEEDED: TaskState.SUCCEEDED,
    task_pb2.TASK_STATE_FAILED: TaskState.FAILED,
    task_pb2.TASK_STATE_CANCELED: TaskState.CANCELED,
}


def error_code_name(code: task_pb2.ErrorCode.ValueType) -> str:
    return task_pb2.ErrorCode.Name(code).removeprefix("ERROR_CODE_").lower()


@dataclass
class _Pending:
    progress: list[events_pb2.TaskEvent] = field(default_factory=list)
    results: list[result_pb2.TaskResult] = field(default_factory=list)


class Projector:
    def __init__(self, sessions: sessionmaker[Session], registry: Registry) -> None:
        self._sessions = sessions
        self._events_topic = registry.name(TopicKey.EVENTS)
        self._result_topic = registry.name(TopicKey.RESULT)
        self.topics = [self._events_topic, self._result_topic]
        self._pending = _Pending()

    def handle(self, record: Record) -> list[Forward]:
        try:
            if record.topic == self._result_topic:
                result = result_pb2.TaskResult.FromString(record.value or b"")
                _checked_task_id(result.task_id, record.topic)
                self._pending.results.append(result)
            else:
                event = events_pb2.TaskEvent.FromString(record.value or b"")
                _checked_task_id(event.task_id, record.topic)
                if event.HasField("stage_progress"):
                    self._pending.progress.append(event)
        except DecodeError as exc:
            raise PoisonMessage(f"not a protobuf {record.topic} value: {exc}") from exc
        return []

    def write_batch(self) -> None:
        """One transaction per consumed batch: progress first, then terminal results."""
        pending, self._pending = self._pending, _Pending()
        if not pending.progress and not pending.results:
            return
        with self._sessions.begin() as session:
            for event in pending.progress:
                self._apply_progress(session, event)
            for result in pending.results:
                self._apply_result(session, result)
        PROJECTED.labels("progress").inc(len(pending.progress))
        PROJECTED.labels("result").inc(len(pending.results))

    def _apply_progress(self, session: Session, event: events_pb2.TaskEvent) -> None:
        progress = event.stage_progress
        occurred_at = event.occurred_at.ToDatetime(tzinfo=UTC)
        session.execute(
            update(Task)
            .where(Task.id == uuid.UUID(event.task_id), Task.state.not_in(TERMINAL_STATES))
            .values(
                state=TaskState.PROCESSING,
                stage=stage_name(progress.stage),
                progress=func.greatest(Task.progress, progress.progress),
                started_at=func.coalesce(Task.started_at, occurred_at),
                updated_at=func.now(),
            )
        )

    def _apply_result(self, session: Session, result: result_pb2.TaskResult) -> None:
        state = _RESULT_STATES.get(result.state)
        if state is None:
            log.error("result for %s has no terminal state (%s); ignored", result.task_id, result.state)
            return
        values: dict[str, object] = {
            "state": state,
            "completed_at": result.completed_at.ToDatetime(tzinfo=UTC),
            "processing_ms": result.processing_ms,
            "updated_at": func.now(),
        }
        if state is TaskState.SUCCEEDED:
            values["progress"] = 1.0
        if result.HasField("started_at"):
            values["started_at"] = func.coalesce(Task.started_at, result.started_at.ToDatetime(tzinfo=UTC))
        if result.HasField("result"):
            values["result_object_key"] = result.result.object_key
        if result.HasField("error"):
            values["error_code"] = error_code_name(result.error.code)
            values["error_message"] = result.error.message
            values["stage"] = stage_name(result.error.stage) if result.error.stage else Task.stage
        session.execute(
            update(Task)
            .where(Task.id == uuid.UUID(result.task_id), Task.state.not_in(TERMINAL_STATES))
            .values(**values)
        )


def _checked_task_id(text: str, topic: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise PoisonMessage(f"{topic} value names no valid task id: {text[:80]!r}") from None
