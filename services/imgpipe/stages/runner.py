"""The stage runner: what detect, generate and matte share around their own image work.

Per envelope: skip a task that already ended (canceled, reaped); fail it with `timeout` past its
deadline; announce the stage; run the work; store the artifact under its deterministic key; then
forward the envelope to the next stage, or end the task with its result. Errors that carry one of
the task error codes end the task with that code, at once unless they are `retryable` (a model
server or an image host that is down), which are retried through the runtime's tiers and end the
task only on the last try; errors without a code (S3, Postgres) are retried by the tiers alone.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from confluent_kafka import Producer
from google.protobuf.message import DecodeError
from prometheus_client import Counter, Histogram

from imgpipe.contracts.payloads import stage_name
from imgpipe.objects import ObjectStore, artifact_key
from imgpipe.runtime.errors import PoisonMessage
from imgpipe.runtime.kafka import Forward, Record
from imgpipe.runtime.telemetry import inject_current_context
from imgpipe.v1 import events_pb2, result_pb2, task_pb2

log = logging.getLogger(__name__)

STAGE_OUTCOMES = Counter(
    "imgpipe_stage_tasks_total", "Tasks a stage finished, by outcome", ["stage", "outcome"]
)
STAGE_SECONDS = Histogram(
    "imgpipe_stage_duration_seconds",
    "Time a stage spent on one task (its own work, including I/O)",
    ["stage"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)

# The stable, machine-readable codes of permanent failures (proto ErrorCode without its prefix).
PERMANENT_CODES = {
    "invalid_image": task_pb2.ERROR_CODE_INVALID_IMAGE,
    "unsupported_format": task_pb2.ERROR_CODE_UNSUPPORTED_FORMAT,
    "image_too_large": task_pb2.ERROR_CODE_IMAGE_TOO_LARGE,
    "fetch_failed": task_pb2.ERROR_CODE_FETCH_FAILED,
    "no_pet_detected": task_pb2.ERROR_CODE_NO_PET_DETECTED,
    "model_error": task_pb2.ERROR_CODE_MODEL_ERROR,
    "timeout": task_pb2.ERROR_CODE_TIMEOUT,
    "canceled": task_pb2.ERROR_CODE_CANCELED,
}
_ORDER = [task_pb2.STAGE_DETECT, task_pb2.STAGE_GENERATE, task_pb2.STAGE_MATTE]


class TaskFailed(Exception):
    """A permanent failure of this task: it ends `failed` with `code` (one of PERMANENT_CODES)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    def __reduce__(self) -> tuple[type[TaskFailed], tuple[str, str]]:
        # Default pickling would call TaskFailed(message) (args holds only the message); a stage pool
        # worker sends it to the parent by pickle.
        return (type(self), (self.code, str(self)))


@dataclass(frozen=True)
class StageOutput:
    data: bytes
    content_type: str
    extension: str
    width: int
    height: int


class StageWork(Protocol):
    """One stage's own work: from the envelope (and the object store) to its output image."""

    stage: task_pb2.Stage.ValueType

    def run(self, envelope: task_pb2.TaskEnvelope, objects: ObjectStore) -> StageOutput: ...


@dataclass(frozen=True)
class StageTopics:
    next_stage: str | None  # None: this is the last stage, its output is the result
    events: str
    result: str


def permanent_code(exc: BaseException) -> str | None:
    """The task error code an exception carries, if it is a permanent failure."""
    code = getattr(exc, "code", None)
    return code if isinstance(code, str) and code in PERMANENT_CODES else None


class StageRunner:
    def __init__(
        self,
        work: StageWork,
        objects: ObjectStore,
        topics: StageTopics,
        progress_producer: Producer,
        has_ended: Callable[[str], bool],
        max_attempts: int,
    ) -> None:
        self._work = work
        self._objects = objects
        self._topics = topics
        self._progress_producer = progress_producer
        self._has_ended = has_ended
        self._max_attempts = max_attempts  # tries the runtime gives a message: 1 + retry tiers
        self._name = stage_name(work.stage)

    def close(self) -> None:
        """Deliver the last progress events before the process exits."""
        self._progress_producer.flush(10)

    def handle(self, record: Record) -> list[Forward]:
        try:
            envelope = task_pb2.TaskEnvelope.FromString(record.value or b"")
        except DecodeError as exc:
            raise PoisonMessage(f"not a TaskEnvelope: {exc}") from exc
        if not envelope.task_id:
            raise PoisonMessage("TaskEnvelope without a task_id")
        if self._has_ended(envelope.task_id):
            STAGE_OUTCOMES.labels(self._name, "skipped_ended").inc()
            log.info("task already ended (canceled or timed out); skipping")
            return []
        now = datetime.now(UTC)
        if envelope.HasField("deadline") and envelope.deadline.ToDatetime(tzinfo=UTC) < now:
            return self._fail(envelope, "timeout", f"deadline passed before {self._name}")

        if not envelope.HasField("started_at"):
            envelope.started_at.FromDatetime(now)
        self._announce_start(envelope, record.attempt)
        started = time.perf_counter()
        try:
            output = self._work.run(envelope, self._objects)
        except Exception as exc:
            code = permanent_code(exc)
            if code is None:
                raise  # transient: the runtime retries it through the tiers
            if getattr(exc, "retryable", False) and record.attempt < self._max_attempts:
                raise  # may succeed later; on the last try it ends the task instead of dead-lettering
            return self._fail(envelope, code, str(exc))
        finally:
            STAGE_SECONDS.labels(self._name).observe(time.perf_counter() - started)

        artifact = self._store(envelope.task_id, output)
        envelope.artifacts[self._name].CopyFrom(artifact)
        envelope.attempts[self._name] = record.attempt
        STAGE_OUTCOMES.labels(self._name, "completed").inc()
        forwards = [self._event(envelope, events_pb2.STAGE_PROGRESS_KIND_COMPLETED, record.attempt)]
        if self._topics.next_stage is not None:
            forwards.append(
                Forward(self._topics.next_stage, envelope.SerializeToString(), key=envelope.task_id)
            )
        else:
            forwards.append(self._result(envelope, task_pb2.TASK_STATE_SUCCEEDED, result=artifact))
        return forwards

    def _store(self, task_id: str, output: StageOutput) -> task_pb2.Artifact:
        return store_artifact(self._objects, task_id, self._name, output)

    def _announce_start(self, envelope: task_pb2.TaskEnvelope, attempt: int) -> None:
        # Sent at once rather than with the batch's forwards, so the API shows the stage while it runs;
        # the consume loop's flush delivers it at the latest with them.
        started = self._event(envelope, events_pb2.STAGE_PROGRESS_KIND_STARTED, attempt)
        headers: dict[str, str | bytes] = {}
        inject_current_context(headers)
        self._progress_producer.produce(
            started.topic, value=started.value, key=envelope.task_id, headers=list(headers.items())
        )
        self._progress_producer.poll(0)

    def _event(
        self,
        envelope: task_pb2.TaskEnvelope,
        kind: events_pb2.StageProgressKind.ValueType,
        attempt: int,
        error: task_pb2.TaskError | None = None,
    ) -> Forward:
        done = _ORDER.index(self._work.stage) + (1 if kind == events_pb2.STAGE_PROGRESS_KIND_COMPLETED else 0)
        event = events_pb2.TaskEvent(
            task_id=envelope.task_id,
            stage_progress=events_pb2.StageProgress(
                stage=self._work.stage, kind=kind, progress=done / len(_ORDER), attempt=attempt, error=error
            ),
        )
        event.occurred_at.GetCurrentTime()
        return Forward(self._topics.events, event.SerializeToString(), key=envelope.task_id)

    def _fail(self, envelope: task_pb2.TaskEnvelope, code: str, message: str) -> list[Forward]:
        STAGE_OUTCOMES.labels(self._name, code).inc()
        log.warning("task failed at %s: %s: %s", self._name, code, message)
        error = task_pb2.TaskError(code=PERMANENT_CODES[code], message=message[:2000], stage=self._work.stage)
        return [
            self._event(envelope, events_pb2.STAGE_PROGRESS_KIND_FAILED, 1, error),
            self._result(envelope, task_pb2.TASK_STATE_FAILED, error=error),
        ]

    def _result(
        self,
        envelope: task_pb2.TaskEnvelope,
        state: task_pb2.TaskState.ValueType,
        result: task_pb2.Artifact | None = None,
        error: task_pb2.TaskError | None = None,
    ) -> Forward:
        outcome = result_pb2.TaskResult(
            task_id=envelope.task_id,
            tenant_id=envelope.tenant_id,
            state=state,
            result=result,
            error=error,
            callback=envelope.callback if envelope.HasField("callback") else None,
            metadata=dict(envelope.metadata),
        )
        outcome.created_at.CopyFrom(envelope.created_at)
        outcome.completed_at.GetCurrentTime()
        if envelope.HasField("started_at"):
            outcome.started_at.CopyFrom(envelope.started_at)
            elapsed = outcome.completed_at.ToMilliseconds() - envelope.started_at.ToMilliseconds()
            outcome.processing_ms = max(0, elapsed)
        return Forward(self._topics.result, outcome.SerializeToString(), key=envelope.task_id)


def store_artifact(objects: ObjectStore, task_id: str, stage: str, output: StageOutput) -> task_pb2.Artifact:
    """Write a stage's output under its deterministic key; the Artifact that names and describes it."""
    key = artifact_key(task_id, stage, output.extension)
    objects.put(key, output.data, output.content_type)
    return task_pb2.Artifact(
        object_key=key,
        content_type=output.content_type,
        width=output.width,
        height=output.height,
        size_bytes=len(output.data),
        sha256=hashlib.sha256(output.data).hexdigest(),
    )
