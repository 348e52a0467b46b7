"""Accepting a task: the one path shared by the HTTP API and the submit-topic consumer.

The task row and the outbox message that queues it for detect commit in one transaction, so an
accepted task is never lost between Postgres and Kafka. The task id is a function of (tenant,
idempotency key), so even racing duplicates converge. A repeated key returns the task it created
when the request is the same (same fingerprint) and is an IdempotencyConflict when it is not.
"""

from __future__ import annotations

import hashlib
import json
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
from imgpipe.store.models import Batch, CallbackStatus, Task, TaskState, Tenant
from imgpipe.v1 import task_pb2

# Documented in docs/contracts.md ("Idempotency"): producers may compute their task ids.
IDEMPOTENCY_NAMESPACE = uuid.UUID("5b0f4cbe-47c1-4a4e-9b1e-6f0a8d1c2e3f")
BATCH_NAMESPACE = uuid.UUID("0d6c3b1e-8f3a-4c53-a8f5-2b7e4f9d6a10")
_CALLBACK_MODES = {
    "immediate": task_pb2.CALLBACK_MODE_IMMEDIATE,
    "batched": task_pb2.CALLBACK_MODE_BATCHED,
}


class ImageTooLarge(ValueError):
    """Inline image bytes over the configured cap."""


class UnknownTenant(ValueError):
    """A submit-topic message names a tenant that does not exist."""


class IdempotencyConflict(ValueError):
    """An idempotency key already used for a different request; `original` is what it made."""

    def __init__(self, kind: str, original: uuid.UUID, idempotency_key: str) -> None:
        super().__init__(
            f"idempotency key {idempotency_key!r} was already used for {kind} {original} "
            "with a different request"
        )
        self.kind = kind  # "task" or "batch"
        self.original = original


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
    """uuid5(IDEMPOTENCY_NAMESPACE, tenant + NUL + key); a random id without a key."""
    if idempotency_key is None:
        return uuid.uuid4()
    return uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"{tenant_id}\x00{idempotency_key}")


def batch_id_for(tenant_id: str, idempotency_key: str) -> uuid.UUID:
    return uuid.uuid5(BATCH_NAMESPACE, f"{tenant_id}\x00{idempotency_key}")


def batch_item_id(batch_id: uuid.UUID, index: int) -> uuid.UUID:
    """The task id of a keyed batch's item that has no key of its own: a replay finds it again."""
    return uuid.uuid5(batch_id, str(index))


def request_fingerprint(new: NewTask) -> str:
    """SHA-256 of the validated request (defaults filled in, the image by its digest), so key order,
    whitespace and omitted defaults do not make a replay look like a different request."""
    canonical = {
        "prompt": new.prompt,
        "image_url": new.image_url,
        "image_sha256": hashlib.sha256(new.image_bytes).hexdigest() if new.image_bytes is not None else None,
        "callback_url": new.callback_url,
        "callback_mode": new.callback_mode if new.callback_url else None,
        "include_inline_result": new.include_inline_result,
        "metadata": dict(new.metadata),
        "time_limit_seconds": new.time_limit_seconds,
    }
    return _sha256_json(canonical)


def batch_fingerprint(items: list[NewTask]) -> str:
    return _sha256_json([[new.idempotency_key, request_fingerprint(new)] for new in items])


def _sha256_json(document: object) -> str:
    encoded = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(encoded.encode()).hexdigest()


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

    def check_size(self, new: NewTask) -> None:
        if new.image_bytes is not None and len(new.image_bytes) > self._max_inline_image_bytes:
            limit = self._max_inline_image_bytes
            raise ImageTooLarge(f"inline image is {len(new.image_bytes)} bytes; the limit is {limit}")

    def accept(
        self,
        tenant_id: str,
        new: NewTask,
        batch_id: uuid.UUID | None = None,
        task_id: uuid.UUID | None = None,
    ) -> tuple[Task, bool]:
        """Record and queue the task; returns it and whether this call created it. `task_id` is for
        keyed batches' items and topic submissions without a key; otherwise the id comes from the
        idempotency key."""
        self.check_size(new)
        fingerprint = request_fingerprint(new)
        derived_id = task_id is not None or new.idempotency_key is not None
        if task_id is None:
            task_id = task_id_for(tenant_id, new.idempotency_key)
        if derived_id:
            existing = self.replayed(tenant_id, task_id, fingerprint, new.idempotency_key)
            if existing is not None:
                return existing, False
        source_object_key = None
        if new.image_bytes is not None:
            # Uploaded before the row commits: a crash in between leaves only an orphan object. The
            # fingerprint in the name keeps a conflicting request from overwriting the original's image.
            source_object_key = artifact_key(str(task_id), f"original-{fingerprint[:16]}", "bin")
            self._objects.put(source_object_key, new.image_bytes, "application/octet-stream")

        now = datetime.now(UTC)
        deadline = now + self._time_limit_of(new)
        row = {
            "id": task_id,
            "tenant_id": tenant_id,
            "idempotency_key": new.idempotency_key,
            "request_sha256": fingerprint,
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
            if inserted is None:  # a racing duplicate committed first
                existing = session.scalars(
                    select(Task).where(Task.tenant_id == tenant_id, Task.id == task_id)
                ).one()
                _check_same_request(existing, fingerprint, new.idempotency_key)
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

    def replayed(
        self, tenant_id: str, task_id: uuid.UUID, fingerprint: str, idempotency_key: str | None
    ) -> Task | None:
        """The task `task_id` when it exists for the same request; IdempotencyConflict when it exists
        for another; None when it does not exist."""
        with self._sessions() as session:
            existing = session.scalars(
                select(Task).where(Task.tenant_id == tenant_id, Task.id == task_id)
            ).one_or_none()
        if existing is not None:
            _check_same_request(existing, fingerprint, idempotency_key)
        return existing

    def open_batch(
        self, tenant_id: str, idempotency_key: str, items: list[NewTask]
    ) -> tuple[uuid.UUID, bool]:
        """Record a keyed batch; returns its id and whether it is new. The same key with other items
        is an IdempotencyConflict naming the first batch."""
        batch_id = batch_id_for(tenant_id, idempotency_key)
        fingerprint = batch_fingerprint(items)
        with self._sessions.begin() as session:
            if session.get(Tenant, tenant_id) is None:
                raise UnknownTenant(f"no tenant {tenant_id!r}")
            inserted = session.execute(
                insert(Batch)
                .values(
                    id=batch_id,
                    tenant_id=tenant_id,
                    idempotency_key=idempotency_key,
                    request_sha256=fingerprint,
                )
                .on_conflict_do_nothing()
                .returning(Batch.id)
            ).scalar_one_or_none()
            if inserted is not None:
                return batch_id, True
            existing = session.get_one(Batch, batch_id)
        if existing.request_sha256 != fingerprint:
            raise IdempotencyConflict("batch", batch_id, idempotency_key)
        return batch_id, False

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

    def record_rejected(
        self,
        tenant_id: str,
        idempotency_key: str | None,
        prompt: str,
        reason: str,
        fallback_id: uuid.UUID,
        fingerprint: str,
    ) -> bool:
        """Record a submission that failed validation as a failed task, so its producer can see it.

        The task is the key's when the key is free (or already names this same rejected submission);
        otherwise, or without a key, it is `fallback_id` without a key (the consumer derives that from
        the message's position, so a redelivery records nothing new). Every text argument must be
        storable. Returns False when the tenant is unknown (nothing to attach it to)."""
        now = datetime.now(UTC)
        values = {
            "tenant_id": tenant_id,
            "request_sha256": fingerprint,
            "state": TaskState.FAILED,
            "progress": 0.0,
            "prompt": prompt,
            "include_inline_result": False,
            "callback_status": CallbackStatus.NOT_REQUIRED,
            "metadata": {},
            "cancel_requested": False,
            "error_code": "invalid_request",
            "error_message": reason,
            "created_at": now,
            "completed_at": now,
            "deadline_at": now,
            "processing_ms": 0,
        }
        with self._sessions.begin() as session:
            if session.get(Tenant, tenant_id) is None:
                return False
            if idempotency_key is not None:
                key_id = task_id_for(tenant_id, idempotency_key)
                inserted = session.execute(
                    insert(Task)
                    .values(id=key_id, idempotency_key=idempotency_key, **values)
                    .on_conflict_do_nothing()
                    .returning(Task.id)
                ).scalar_one_or_none()
                if inserted is not None or session.get_one(Task, key_id).request_sha256 == fingerprint:
                    return True
            session.execute(
                insert(Task).values(id=fallback_id, idempotency_key=None, **values).on_conflict_do_nothing()
            )
        return True


def _check_same_request(existing: Task, fingerprint: str, idempotency_key: str | None) -> None:
    # Rows from before fingerprints were stored (NULL) cannot be compared; they keep the old answer.
    if existing.request_sha256 is not None and existing.request_sha256 != fingerprint:
        raise IdempotencyConflict("task", existing.id, idempotency_key or "")
