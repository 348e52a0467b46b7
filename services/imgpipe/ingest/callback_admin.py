"""What the admin API does to callbacks: per-URL/host policies on their compacted topic, and replays.

Policies live only in Kafka (the callback app reads the compacted topic as a global table): a write is
a record keyed by the policy key, a delete is a tombstone, and listing reads the topic from its start
to the end it had when the listing began. Keys are normalized the way the callback app looks them
up: a URL as ingest stores callback URLs (pydantic's normal form), a host as `urlsplit(url).hostname`
of such a URL (lower case, IDNA, no port).

A replay rebuilds each selected task's TaskResult from its row and sends it to the callback request
topic again with a new replay id (so the delivery gets a new webhook-id), with the rows locked until
the broker acknowledged them; then `callback_status` goes back to `pending` (a `delivered` one stays).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Literal

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from google.protobuf.message import DecodeError
from prometheus_client import Counter
from pydantic import AnyHttpUrl, TypeAdapter, ValidationError
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from imgpipe.contracts.registry import Registry, TopicKey
from imgpipe.ingest.models import (
    CallbackMode,
    CallbackPolicyBody,
    CallbackPolicyView,
    ReplayRequest,
    ReplayTask,
    ReplayView,
)
from imgpipe.ingest.problem_codes import ProblemCode
from imgpipe.ingest.results import task_result
from imgpipe.runtime.kafka import ReadToEndFailed, client_config, partition_ends, read_until
from imgpipe.runtime.settings import RuntimeSettings
from imgpipe.runtime.telemetry import inject_current_context
from imgpipe.store.models import TERMINAL_STATES, CallbackStatus, Task
from imgpipe.v1 import callback_pb2, task_pb2

log = logging.getLogger(__name__)

REPLAYED = Counter("imgpipe_callback_replays_total", "Task callbacks re-sent by the admin replay")
POLICY_WRITES = Counter("imgpipe_callback_policy_writes_total", "Callback policy writes by kind", ["kind"])

REPLAY_LIMIT = 10_000
_URL = TypeAdapter(AnyHttpUrl)
_SCOPES: dict[str, callback_pb2.PolicyScope.ValueType] = {
    "url": callback_pb2.POLICY_SCOPE_URL,
    "host": callback_pb2.POLICY_SCOPE_HOST,
}
_MODES: dict[CallbackMode, task_pb2.CallbackMode.ValueType] = {
    CallbackMode.IMMEDIATE: task_pb2.CALLBACK_MODE_IMMEDIATE,
    CallbackMode.BATCHED: task_pb2.CALLBACK_MODE_BATCHED,
}


class PolicyKeyError(ValueError):
    """The key is neither an http(s) URL nor a host name, or does not match the body's scope."""


class KafkaUnavailable(RuntimeError):
    """The broker did not acknowledge a write, or a read did not reach the end in time."""


class ReplayRefused(Exception):
    """The task cannot be replayed: unknown (404), not ended or without a callback URL (409)."""

    def __init__(self, status: int, code: ProblemCode, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


def parse_policy_key(raw: str) -> tuple[Literal["url", "host"], str]:
    """The scope a key names and its normal form: a URL when it has a scheme, else a host name."""
    text = raw.strip()
    if "://" in text:
        try:
            return "url", str(_URL.validate_python(text))
        except ValidationError:
            raise PolicyKeyError(f"{raw!r} is not an http(s) URL") from None
    ipv6 = text.startswith("[") and text.endswith("]")
    if not text or any(c in text for c in "/?#@\\ ") or (":" in text and not ipv6):
        raise PolicyKeyError(f"{raw!r} is neither an http(s) URL nor a host name (without port)")
    try:
        url = _URL.validate_python(f"http://{text}/")
    except ValidationError:
        raise PolicyKeyError(f"{raw!r} is not a valid host name") from None
    assert url.host is not None  # http URLs always have one
    return "host", url.host.strip("[]")


class CallbackAdmin:
    def __init__(
        self,
        settings: RuntimeSettings,
        registry: Registry,
        sessions: sessionmaker[Session],
        producer: Producer,
        *,
        replay_limit: int = REPLAY_LIMIT,
        timeout_seconds: float = 10.0,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._producer = producer
        self._policies_topic = registry.name(TopicKey.CALLBACK_POLICIES)
        self._requests_topic = registry.name(TopicKey.CALLBACK_REQUESTS)
        self.replay_limit = replay_limit
        self._timeout = timeout_seconds

    def close(self) -> None:
        """Release the producer. Every send waited for its acknowledgement (or answered 503), so
        whatever is still queued was never confirmed to a caller and is dropped."""
        self._producer.purge()
        self._producer.close()

    # -- policies ------------------------------------------------------------------------------

    def put_policy(self, raw_key: str, body: CallbackPolicyBody) -> CallbackPolicyView:
        scope, key = parse_policy_key(raw_key)
        if scope != body.scope:
            raise PolicyKeyError(f"{key!r} is a {scope} key but the body's scope is {body.scope!r}")
        policy = callback_pb2.CallbackPolicy(
            key=key,
            scope=_SCOPES[scope],
            rate_per_second=body.rate_per_second,
            burst=body.burst,
            batch_size=body.batch_size,
            max_delay_ms=body.max_delay_ms,
            mode_override=_MODES[body.mode_override]
            if body.mode_override
            else task_pb2.CALLBACK_MODE_UNSPECIFIED,
            timeout_ms=body.timeout_ms,
            disabled=body.disabled,
        )
        policy.updated_at.FromDatetime(datetime.now(UTC))
        self._publish(self._policies_topic, [(key, policy.SerializeToString())])
        POLICY_WRITES.labels("put").inc()
        log.info("callback policy for %s %s stored", scope, key)
        return policy_view(policy)

    def delete_policy(self, raw_key: str) -> str:
        """Write the key's tombstone (also when no policy exists: deleting is idempotent)."""
        scope, key = parse_policy_key(raw_key)
        self._publish(self._policies_topic, [(key, None)])
        POLICY_WRITES.labels("delete").inc()
        log.info("callback policy for %s %s deleted", scope, key)
        return key

    def get_policy(self, raw_key: str) -> CallbackPolicyView | None:
        _, key = parse_policy_key(raw_key)
        return next((view for view in self.list_policies() if view.key == key), None)

    def list_policies(self) -> list[CallbackPolicyView]:
        """The current policies: the topic read from its start to its end, latest value per key."""
        consumer = Consumer(
            {
                **client_config(self._settings, f"{self._settings.service_name}-admin-policies"),
                "group.id": f"unused-{uuid.uuid4().hex}",  # required by the client; never joined
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            }
        )
        try:
            latest = self._read_to_end(consumer, self._policies_topic)
        except (KafkaException, ReadToEndFailed) as exc:
            raise KafkaUnavailable(f"reading callback policies failed: {exc}") from exc
        finally:
            consumer.close()
        views = []
        for key, value in sorted(latest.items()):
            if value is None:
                continue  # deleted
            try:
                views.append(policy_view(callback_pb2.CallbackPolicy.FromString(value), key))
            except DecodeError:
                log.error("callback policy record for %r is not a CallbackPolicy; skipped", key)
        return views

    def _read_to_end(self, consumer: Consumer, topic: str) -> dict[str, bytes | None]:
        """The latest value per key of what the topic held when the read began."""
        ends = partition_ends(consumer, topic, self._timeout)
        if not ends:
            return {}
        consumer.assign([TopicPartition(t, partition, OFFSET_BEGINNING) for t, partition in ends])
        return {
            message.key_text: message.value
            for message in read_until(consumer, ends, self._timeout)
            if message.key_text is not None
        }

    # -- replay --------------------------------------------------------------------------------

    def replay(self, request: ReplayRequest) -> ReplayView:
        replay_id = uuid.uuid4().hex
        with self._sessions.begin() as session:
            tasks, truncated = self._select_for_replay(session, request)
            commands = []
            for task in tasks:
                command = callback_pb2.CallbackCommand(replay_id=replay_id)
                command.result.CopyFrom(task_result(task))
                assert task.callback_url is not None  # selected for having one
                commands.append((task.callback_url, command.SerializeToString()))
            # The rows stay locked until the broker has the commands, so the projector cannot record a
            # replayed delivery before its status went back to pending. A failure here rolls back.
            self._publish(self._requests_topic, commands)
            if tasks:
                session.execute(
                    update(Task)
                    .where(
                        Task.id.in_([task.id for task in tasks]),
                        Task.callback_status != CallbackStatus.DELIVERED,
                    )
                    .values(callback_status=CallbackStatus.PENDING, updated_at=func.now())
                )
        REPLAYED.inc(len(tasks))
        log.info("replayed %d callbacks as %s (truncated: %s)", len(tasks), replay_id, truncated)
        return ReplayView(
            replayed=len(tasks), replay_id=replay_id, truncated=truncated, limit=self.replay_limit
        )

    def _select_for_replay(self, session: Session, request: ReplayRequest) -> tuple[Sequence[Task], bool]:
        if isinstance(request, ReplayTask):
            task = session.get(Task, request.task_id, with_for_update=True)
            if task is None:
                raise ReplayRefused(404, ProblemCode.NOT_FOUND, f"no task {request.task_id}")
            if task.state not in TERMINAL_STATES:
                raise ReplayRefused(
                    409, ProblemCode.NOT_FINISHED, f"task {task.id} has not ended ({task.state.value})"
                )
            if not task.callback_url:
                raise ReplayRefused(409, ProblemCode.NO_CALLBACK, f"task {task.id} has no callback URL")
            return [task], False
        query = select(Task).where(
            Task.callback_url == str(request.callback_url),
            Task.completed_at >= request.since,
            Task.state.in_(TERMINAL_STATES),
        )
        if request.only_failed:
            query = query.where(Task.callback_status == CallbackStatus.FAILED)
        query = query.order_by(Task.completed_at, Task.id).limit(self.replay_limit + 1).with_for_update()
        tasks = session.scalars(query).all()
        return tasks[: self.replay_limit], len(tasks) > self.replay_limit

    # -- Kafka ---------------------------------------------------------------------------------

    def _publish(self, topic: str, messages: Sequence[tuple[str, bytes | None]]) -> None:
        """Produce keyed messages and wait until the broker acknowledged every one of them."""
        if not messages:
            return
        errors: list[KafkaError] = []
        acknowledged = 0

        def on_delivery(error: KafkaError | None, _message: Message) -> None:
            nonlocal acknowledged
            acknowledged += 1
            if error is not None:
                errors.append(error)

        headers: dict[str, str | bytes] = {}
        inject_current_context(headers)
        deadline = time.monotonic() + self._timeout
        for key, value in messages:
            while True:
                try:
                    self._producer.produce(
                        topic,
                        value=value,
                        key=key.encode(),
                        headers=list(headers.items()),
                        on_delivery=on_delivery,
                    )
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    if time.monotonic() > deadline:
                        raise KafkaUnavailable(f"the producer queue for {topic} stayed full") from None
                    self._producer.poll(0.1)
        self._producer.flush(max(0.0, deadline - time.monotonic()))
        # Another thread's flush may be running our callbacks; wait until all of them have run.
        while acknowledged < len(messages) and time.monotonic() < deadline:
            self._producer.poll(0.05)
        if acknowledged < len(messages) or errors:
            missing = len(messages) - acknowledged
            raise KafkaUnavailable(
                f"{topic}: {missing} of {len(messages)} unacknowledged, errors {errors[:3]}"
            )


def policy_view(policy: callback_pb2.CallbackPolicy, key: str | None = None) -> CallbackPolicyView:
    key = key if key is not None else policy.key
    scope: Literal["url", "host"]
    if policy.scope == callback_pb2.POLICY_SCOPE_HOST:
        scope = "host"
    elif policy.scope == callback_pb2.POLICY_SCOPE_URL:
        scope = "url"
    else:
        scope = "url" if "://" in key else "host"
    mode = {
        task_pb2.CALLBACK_MODE_IMMEDIATE: CallbackMode.IMMEDIATE,
        task_pb2.CALLBACK_MODE_BATCHED: CallbackMode.BATCHED,
    }.get(policy.mode_override)
    return CallbackPolicyView(
        key=key,
        scope=scope,
        rate_per_second=policy.rate_per_second,
        burst=policy.burst,
        batch_size=policy.batch_size,
        max_delay_ms=policy.max_delay_ms,
        mode_override=mode,
        timeout_ms=policy.timeout_ms,
        disabled=policy.disabled,
        updated_at=policy.updated_at.ToDatetime(tzinfo=UTC) if policy.HasField("updated_at") else None,
    )
