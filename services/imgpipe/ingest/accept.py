"""Accepting a task: the one path shared by the HTTP API and the submit-topic consumer.

The task row and the outbox message that queues it for detect commit in one transaction, so an
accepted task is never lost between Postgres and Kafka. A repeated idempotency key returns the
task that key created; the task id is derived from the key, so even racing duplicates converge.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session, sessionmaker

from imgpipe.contracts.registry import Registry, TopicKey
from imgpipe.ingest import outbox
from imgpipe.ingest.models import SubmitTask
from imgpipe.objects import ObjectStore, artifact_key
from imgpipe.runtime.telemetry import inject_current_context
from imgpipe.store.models import CallbackStatus, Task, TaskState, Tenant
from imgpipe.v1 import task_pb2

_IDEMPOTENCY_NAMESPACE = uuid.UUID("5b0f4cbe-47c1-4a4e-9b1e-6f0a8d1c2e3f")
_CALLBACK_MODES = {
    "immediate": task_pb2.CALLBACK_MODE_IMMEDIATE,
    "batched": task_pb2.CALLBACK_MODE_BATCHED,
}


class ImageTooLarge(ValueError):
    """Inline image bytes over the configured cap."""


class UnknownTenant(ValueError):
    """A submit-topic message names a tenant that does not exist."""


@dataclass(frozen=True)
class NewTask:
    """A validated submission, whichever door it came through."""

    prompt: str
    image_url: str | None = None
    image_bytes: bytes | None = None
    callback_url: str | None = None
    callback_mode: str = "immediate"
    include_inline_result: bool = False
    metadata: Mapping[str, str] = field(default_factory=dict)
    idempotency_key: str | None = None
    time_limit_seconds: float | None = None  # shorter than the service's limit, or None for it

    @classmethod
    def from_submission(
        cls, body: SubmitTask, image_bytes: bytes | None, idempotency_key: str | None
    ) -> NewTask:
        return cls(
            prompt=body.prompt,
            image_url=str(body.image_url) if body.image_url else None,
            image_bytes=image_bytes,
            callback_url=str(body.callback_url) if body.callback_url else None,
            callback_mode=body.callback_mode.value,
            include_inline_result=body.include_inline_result,
            metadata=body.metadata,
            idempotency_key=idempotency_key,
            time_limit_seconds=body.time_limit_seconds,
        )


def task_id_for(tenant_id: str, idempotency_key: str | None) -> uuid.UUID:
    if idempotency_key is None:
        return uuid.uuid4()
    return uuid.uuid5(_IDEMPOTENCY_NAMESPACE, f"{tenant_id}\x00{idempotency_key}")


class TaskAcceptor:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        objects: ObjectStore,
        registry: Registry,
        time_limit_seconds: float,
        max_inline_image_bytes: int,
    ) -> None:
        self._sessions = sessions
        self._objects = objects
        self._detect_topic = registry.name(TopicKey.DETECT)
        self._time_limit = timedelta(seconds=time_limit_seconds)
        self._max_inline_image_bytes = max_inline_image_bytes

    def accept(self, tenant_id: str, new: NewTask, batch_id: uuid.UUID | None = None) -> tuple[Task, bool]:
        """Record and queue the task; returns it and whether this call created it."""
        task_id = task_id_for(tenant_id, new.idempotency_key)
        source_object_key = None
        if new.image_bytes is not None:
            if len(new.image_bytes) > self._max_inline_image_bytes:
                limit = self._max_inline_image_bytes
                raise ImageTooLarge(f"inline image is {len(new.image_bytes)} bytes; the limit is {limit}")
            # Uploaded before the row commits: a crash in between leaves only an orphan object.
            source_object_key = artifact_key(str(task_id), "original", "bin")
            self._objects.put(source_object_key, new.image_bytes, "application/octet-stream")

        now = datetime.now(UTC)
        deadline = now + self._time_limit_of(new)
        row = {
            "id": task_id,
            "tenant_id": tenant_id,
            "idempotency_key": new.idempotency_key,
            "batch_id": batch_id,
            "state": TaskState.QUEUED,
            "progress": 0.0,
            "prompt": new.prompt,
            "source_url": new.image_url,
            "source_object_key": source_object_key,
            "callback_url": new.callback_url,
            "callback_mode": new.callback_mode if new.callback_url else None,
            "include_inline_result": new.include_inline_result,
            "callback_status": CallbackStatus.PENDING if new.callback_url else CallbackStatus.NOT_REQUIRED,
            "metadata": dict(new.metadata),
            "cancel_requested": False,
            "created_at": now,
            "deadline_at": deadline,
        }
        with self._sessions.begin() as session:
            if session.get(Tenant, tenant_id) is None:
                raise UnknownTenant(f"no tenant {tenant_id!r}")
            inserted = session.execute(
                insert(Task).values(**row).on_conflict_do_nothing().returning(Task.id)
            ).scalar_one_or_none()
            if inserted is None:
                existing = session.scalars(
                    select(Task).where(Task.tenant_id == tenant_id, Task.id == task_id)
                ).one()
                return existing, False
            envelope = self._envelope(tenant_id, task_id, new, source_object_key, now, deadline)
            headers: dict[str, str | bytes] = {}
            inject_current_context(headers)
            outbox.enqueue(
                session,
                self._detect_topic,
                str(task_id),
                envelope.SerializeToString(),
                {
                    name: value if isinstance(value, str) else value.decode()
                    for name, value in headers.items()
                },
            )
            task = session.get_one(Task, task_id)
        return task, True

    def _envelope(
        self,
        tenant_id: str,
        task_id: uuid.UUID,
        new: NewTask,
        source_object_key: str | None,
        now: datetime,
        deadline: datetime,
    ) -> task_pb2.TaskEnvelope:
        envelope = task_pb2.TaskEnvelope(
            task_id=str(task_id),
            tenant_id=tenant_id,
            prompt=new.prompt,
            metadata=dict(new.metadata),
            idempotency_key=new.idempotency_key or "",
        )
        if source_object_key is not None:
            envelope.source.object_key = source_object_key
        else:
            envelope.source.url = new.image_url or ""
        if new.callback_url:
            envelope.callback.url = new.callback_url
            envelope.callback.mode = _CALLBACK_MODES[new.callback_mode]
            envelope.callback.include_inline_result = new.include_inline_result
        envelope.created_at.FromDatetime(now)
        envelope.deadline.FromDatetime(deadline)
        return envelope

    def _time_limit_of(self, new: NewTask) -> timedelta:
        if new.time_limit_seconds is None:
            return self._time_limit
        return min(self._time_limit, timedelta(seconds=new.time_limit_seconds))

    def record_rejected(self, tenant_id: str, idempotency_key: str | None, prompt: str, reason: str) -> bool:
        """Record a submission that failed validation as a failed task, so its producer can look it
        up by idempotency key. Returns False when the tenant is unknown (nothing to attach it to)."""
        now = datetime.now(UTC)
        with self._sessions.begin() as session:
            if session.get(Tenant, tenant_id) is None:
                return False
            session.execute(
                insert(Task)
                .values(
                    id=task_id_for(tenant_id, idempotency_key),
                    tenant_id=tenant_id,
                    idempotency_key=idempotency_key,
                    state=TaskState.FAILED,
                    progress=0.0,
                    prompt=prompt,
                    include_inline_result=False,
                    callback_status=CallbackStatus.NOT_REQUIRED,
                    metadata={},
                    cancel_requested=False,
                    error_code="invalid_request",
                    error_message=reason,
                    created_at=now,
                    completed_at=now,
                    deadline_at=now,
                    processing_ms=0,
                )
                .on_conflict_do_nothing()
            )
        return True
