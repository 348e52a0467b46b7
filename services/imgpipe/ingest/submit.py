"""The submit-topic consumer: external producers' tasks, accepted exactly like HTTP submissions.

The value is JSON per schemas/json/submit-task.v1.schema.json, or a serialized SubmitTaskRequest
when the `content-type` header says protobuf. The idempotency key is the payload's field only: the
Kafka message key is the producer's to partition by (a customer id, say) and is never read.

An invalid message is dead-lettered with its reason; whenever it names a known tenant, a failed task
(`invalid_request`) is recorded too, so the producer can find out. Task-store errors are classified
by store/errors.py: permanent ones are invalid messages, transient ones are retried through the tiers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from typing import Any, NoReturn

from google.protobuf.message import DecodeError
from pydantic import ValidationError
from sqlalchemy.exc import StatementError

from imgpipe.contracts import payloads
from imgpipe.contracts.registry import TopicSpec
from imgpipe.ingest.accept import (
    IDEMPOTENCY_NAMESPACE,
    IdempotencyConflict,
    ImageTooLarge,
    NewTask,
    TaskAcceptor,
    UnknownTenant,
)
from imgpipe.ingest.models import SubmitTopicTask, make_storable, storable
from imgpipe.runtime.errors import PoisonMessage, TransientError
from imgpipe.runtime.kafka import Forward, Record
from imgpipe.store import errors as store_errors
from imgpipe.v1 import submit_pb2

log = logging.getLogger(__name__)


class SubmitConsumer:
    def __init__(self, acceptor: TaskAcceptor, submit_topic: TopicSpec) -> None:
        self._acceptor = acceptor
        self._spec = submit_topic
        self.topics = [submit_topic.name]

    def handle(self, record: Record) -> list[Forward]:
        try:
            request = payloads.decode_value(
                self._spec, record.value or b"", record.header(payloads.CONTENT_TYPE_HEADER)
            )
            task = SubmitTopicTask.model_validate(payloads.to_external_json(request))
            image_bytes = task.inline_bytes()
        except (payloads.PayloadError, ValidationError, ValueError) as exc:
            self._reject(record, str(exc))
        new = NewTask.from_submission(task, image_bytes, task.idempotency_key)
        # Without a key, the message's position names the task: a redelivery makes no second one.
        task_id = None if task.idempotency_key else position_task_id(record, task.tenant_id)
        try:
            self._acceptor.accept(task.tenant_id, new, task_id=task_id)
        except (ImageTooLarge, UnknownTenant, IdempotencyConflict) as exc:
            self._reject(record, str(exc))
        except StatementError as exc:
            if store_errors.is_permanent(exc):
                self._reject(record, f"the task store refused the submission: {store_errors.describe(exc)}")
            raise TransientError(f"task store: {store_errors.describe(exc)}") from exc
        return []  # the task's detect message leaves through the outbox

    def _reject(self, record: Record, reason: str) -> NoReturn:
        identity = _identity(self._document(record))
        if identity is not None:
            tenant_id, idempotency_key, prompt = identity
            fallback_id = position_task_id(record, tenant_id)
            fingerprint = "rejected:" + hashlib.sha256(record.value or b"").hexdigest()[:55]
            recorded = self._acceptor.record_rejected(
                tenant_id, idempotency_key, prompt, make_storable(reason[:2000]), fallback_id, fingerprint
            )
            if recorded:
                log.warning("recorded rejected submission of %s (%s)", tenant_id, idempotency_key)
        raise PoisonMessage(f"invalid submission: {reason}")

    def _document(self, record: Record) -> Any:
        """The message as the external JSON form, however invalid, or None when it is not readable."""
        value = record.value or b""
        if payloads.is_protobuf(record.header(payloads.CONTENT_TYPE_HEADER)):
            try:
                return payloads.to_external_json(submit_pb2.SubmitTaskRequest.FromString(value))
            except (DecodeError, ValueError):
                return None
        try:
            return json.loads(value)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None


def position_task_id(record: Record, tenant_id: str) -> uuid.UUID:
    """The id of a keyless submission: from the message's position, so a redelivery names the same task;
    and the tenant, since a position is reused when a topic is recreated."""
    position = f"{record.topic}\x00{record.partition}\x00{record.offset}"
    return uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"{tenant_id}\x00{position}")


def _identity(document: Any) -> tuple[str, str | None, str] | None:
    """Tenant, idempotency key (None when absent or unusable) and prompt of a rejected submission,
    when it names a tenant the task store could hold."""
    if not isinstance(document, dict):
        return None
    tenant_id, key, prompt = (
        document.get("tenant_id"),
        document.get("idempotency_key"),
        document.get("prompt"),
    )
    if not (isinstance(tenant_id, str) and 0 < len(tenant_id) <= 64 and _is_storable(tenant_id)):
        return None
    usable_key = key if isinstance(key, str) and 0 < len(key) <= 255 and _is_storable(key) else None
    return tenant_id, usable_key, make_storable(prompt[:4000]) if isinstance(prompt, str) else ""


def _is_storable(text: str) -> bool:
    try:
        storable(text)
    except ValueError:
        return False
    return True
