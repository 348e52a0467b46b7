"""The projector: stage events, terminal results and callback attempts, written into Postgres in batches.

States only move forward: a terminal task is never touched again, progress never decreases, and
the first start time wins. So replays and out-of-order events are harmless.

Callback attempts are inserted once per (task, webhook_id, attempt, outcome); only newly inserted
attempts move `callback_status`: DELIVERED makes it `delivered` (final), FAILED and DISABLED make a
`pending` one `failed`, RETRYING and RATE_LIMITED leave it. An admin replay sets `failed` back to
`pending`, so the replay's own attempts decide again; nothing moves a task off `delivered`.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC

from google.protobuf.message import DecodeError
from prometheus_client import Counter
from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session, sessionmaker

from imgpipe.contracts.payloads import stage_name
from imgpipe.contracts.registry import Registry, TopicKey
from imgpipe.ingest.results import result_columns
from imgpipe.runtime.errors import PoisonMessage
from imgpipe.runtime.kafka import Forward, Record
from imgpipe.store.models import (
    TERMINAL_STATES,
    CallbackAttempt,
    CallbackOutcome,
    CallbackStatus,
    Task,
    TaskState,
)
from imgpipe.v1 import callback_pb2, events_pb2, result_pb2, task_pb2

log = logging.getLogger(__name__)

PROJECTED = Counter("imgpipe_projector_updates_total", "Task updates written, by kind", ["kind"])

_RESULT_STATES = {
    task_pb2.TASK_STATE_SUCCEEDED: TaskState.SUCCEEDED,
    task_pb2.TASK_STATE_FAILED: TaskState.FAILED,
    task_pb2.TASK_STATE_CANCELED: TaskState.CANCELED,
}

_OUTCOMES = {
    callback_pb2.CALLBACK_OUTCOME_DELIVERED: CallbackOutcome.DELIVERED,
    callback_pb2.CALLBACK_OUTCOME_RETRYING: CallbackOutcome.RETRYING,
    callback_pb2.CALLBACK_OUTCOME_FAILED: CallbackOutcome.FAILED,
    callback_pb2.CALLBACK_OUTCOME_DISABLED: CallbackOutcome.DISABLED,
    callback_pb2.CALLBACK_OUTCOME_RATE_LIMITED: CallbackOutcome.RATE_LIMITED,
}
_FINAL_FAILURES = frozenset({CallbackOutcome.FAILED, CallbackOutcome.DISABLED})
_NOT_SENT = frozenset({CallbackOutcome.DISABLED, CallbackOutcome.RATE_LIMITED})
_INSERT_CHUNK = 500  # rows per INSERT statement (11 parameters each, under Postgres's 65535)
_MAX_ERROR_CHARS = 2000


def error_code_name(code: task_pb2.ErrorCode.ValueType) -> str:
    return task_pb2.ErrorCode.Name(code).removeprefix("ERROR_CODE_").lower()


@dataclass
class _Pending:
    progress: list[events_pb2.TaskEvent] = field(default_factory=list)
    results: list[result_pb2.TaskResult] = field(default_factory=list)
    attempts: list[events_pb2.TaskEvent] = field(default_factory=list)


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
                elif event.HasField("callback_attempt"):
                    self._pending.attempts.append(event)
        except DecodeError as exc:
            raise PoisonMessage(f"not a protobuf {record.topic} value: {exc}") from exc
        return []

    def write_batch(self) -> None:
        """One transaction per consumed batch: progress first, then terminal results, then callback
        attempts. If it raises, the consume loop redoes the whole batch (handle() refills it)."""
        pending, self._pending = self._pending, _Pending()
        if not pending.progress and not pending.results and not pending.attempts:
            return
        with self._sessions.begin() as session:
            for event in pending.progress:
                self._apply_progress(session, event)
            for result in pending.results:
                self._apply_result(session, result)
            inserted = self._apply_attempts(session, pending.attempts)
        PROJECTED.labels("progress").inc(len(pending.progress))
        PROJECTED.labels("result").inc(len(pending.results))
        PROJECTED.labels("callback_attempt").inc(inserted)

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
            values.update(result_columns(result.result))
        if result.HasField("error"):
            values["error_code"] = error_code_name(result.error.code)
            values["error_message"] = result.error.message
            values["stage"] = stage_name(result.error.stage) if result.error.stage else Task.stage
            values["error_stage"] = stage_name(result.error.stage) if result.error.stage else None
        session.execute(
            update(Task)
            .where(Task.id == uuid.UUID(result.task_id), Task.state.not_in(TERMINAL_STATES))
            .values(**values)
        )

    def _apply_attempts(self, session: Session, events: list[events_pb2.TaskEvent]) -> int:
        """Insert the attempts not seen before and move callback_status by those; returns how many."""
        rows = [row for row in map(_attempt_row, events) if row is not None]
        if not rows:
            return 0
        known = set(session.scalars(select(Task.id).where(Task.id.in_({row["task_id"] for row in rows}))))
        unknown = [row for row in rows if row["task_id"] not in known]
        if unknown:
            # An attempt row needs its task (foreign key); an unknown id is someone else's bug, not a retry.
            log.warning("ignored %d callback attempts of unknown tasks, e.g. %s", len(unknown), unknown[0])
            rows = [row for row in rows if row["task_id"] in known]
        new: list[tuple[uuid.UUID, str]] = []
        for start in range(0, len(rows), _INSERT_CHUNK):
            statement = (
                insert(CallbackAttempt)
                .values(rows[start : start + _INSERT_CHUNK])
                .on_conflict_do_nothing()
                .returning(CallbackAttempt.task_id, CallbackAttempt.outcome)
            )
            new += [(task_id, outcome) for task_id, outcome in session.execute(statement)]
        delivered = {task_id for task_id, outcome in new if outcome == CallbackOutcome.DELIVERED}
        failed = {task_id for task_id, outcome in new if outcome in _FINAL_FAILURES} - delivered
        if delivered:
            session.execute(
                update(Task)
                .where(
                    Task.id.in_(delivered),
                    Task.callback_status.in_([CallbackStatus.PENDING, CallbackStatus.FAILED]),
                )
                .values(callback_status=CallbackStatus.DELIVERED, updated_at=func.now())
            )
        if failed:
            session.execute(
                update(Task)
                .where(Task.id.in_(failed), Task.callback_status == CallbackStatus.PENDING)
                .values(callback_status=CallbackStatus.FAILED, updated_at=func.now())
            )
        return len(new)


def _attempt_row(event: events_pb2.TaskEvent) -> dict[str, object] | None:
    attempt = event.callback_attempt
    outcome = _OUTCOMES.get(attempt.outcome)
    if outcome is None:
        log.error("callback attempt for %s has no outcome (%s); ignored", event.task_id, attempt.outcome)
        return None
    stamp = attempt.attempted_at if attempt.HasField("attempted_at") else event.occurred_at
    return {
        "task_id": uuid.UUID(event.task_id),
        "webhook_id": attempt.webhook_id,
        "attempt": attempt.attempt,
        "url": attempt.url,
        "status_code": attempt.status_code or None,  # 0: no response arrived
        # DISABLED and RATE_LIMITED attempts sent nothing, so they have no latency.
        "latency_ms": None if outcome in _NOT_SENT else attempt.latency_ms,
        "error": attempt.error[:_MAX_ERROR_CHARS] or None,
        "outcome": outcome.value,
        "attempted_at": stamp.ToDatetime(tzinfo=UTC),
        "next_attempt_at": attempt.next_attempt_at.ToDatetime(tzinfo=UTC)
        if attempt.HasField("next_attempt_at")
        else None,
    }


def _checked_task_id(text: str, topic: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise PoisonMessage(f"{topic} value names no valid task id: {text[:80]!r}") from None
