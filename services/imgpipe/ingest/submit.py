"""The submit-topic consumer: external producers' tasks, accepted exactly like HTTP submissions.

The value is JSON per schemas/json/submit-task.v1.schema.json, or a serialized SubmitTaskRequest
when the `content-type` header says protobuf. The idempotency key is the payload's field, else the
message key. An invalid message is dead-lettered with its reason; when it still names a known
tenant, a failed task (`invalid_request`) is recorded too, so the producer can find out.
"""

from __future__ import annotations

import json
import logging
from typing import NoReturn

from pydantic import ValidationError

from imgpipe.contracts import payloads
from imgpipe.contracts.registry import TopicSpec
from imgpipe.ingest.accept import ImageTooLarge, NewTask, TaskAcceptor, UnknownTenant
from imgpipe.ingest.models import SubmitTopicTask
from imgpipe.runtime.errors import PoisonMessage
from imgpipe.runtime.kafka import Forward, Record

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
        idempotency_key = task.idempotency_key or record.key_text
        new = NewTask.from_submission(task, image_bytes, idempotency_key)
        try:
            self._acceptor.accept(task.tenant_id, new)
        except (ImageTooLarge, UnknownTenant) as exc:
            self._reject(record, str(exc))
        return []  # the task's detect message leaves through the outbox

    def _reject(self, record: Record, reason: str) -> NoReturn:
        identity = _identity(record)
        if identity is not None:
            tenant_id, idempotency_key, prompt = identity
            if self._acceptor.record_rejected(tenant_id, idempotency_key, prompt, reason[:2000]):
                log.warning("recorded rejected submission of %s (%s)", tenant_id, idempotency_key)
        raise PoisonMessage(f"invalid submission: {reason}")


def _identity(record: Record) -> tuple[str, str, str] | None:
    """Tenant, idempotency key and prompt of a rejected JSON submission, if it names them."""
    try:
        document = json.loads(record.value or b"")
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(document, dict):
        return None
    tenant_id, key = document.get("tenant_id"), document.get("idempotency_key") or record.key_text
    if not (isinstance(tenant_id, str) and tenant_id and isinstance(key, str) and key):
        return None
    prompt = document.get("prompt")
    return tenant_id[:64], key[:255], prompt if isinstance(prompt, str) else ""
