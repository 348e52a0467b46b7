"""The at-least-once consume loop every Kafka-driven service runs.

For each batch polled: call the handler per message, produce what it returns (or route the
failure), wait until the broker has acknowledged all of it, and only then store the offsets.
A crash anywhere before that redelivers the batch; handlers are therefore written idempotent.

Failures never stall a partition:
- `PoisonMessage` (the message can never be processed) goes to the dead-letter topic at once.
- Any other exception is treated as transient: the message is copied to the next retry tier
  topic with a due time, and the loop moves on. Every group also reads the tier topics, picks out
  the copies addressed to it, and holds (pauses) a tier partition until its head copy is due; a
  tier has one fixed delay, so the head is always the next due. After the last tier: dead letter.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from prometheus_client import Counter, Gauge, Histogram

from imgpipe.runtime.errors import PoisonMessage, TransientError
from imgpipe.runtime.health import Health
from imgpipe.runtime.kafka import (
    ATTEMPT_HEADER,
    DEAD_LETTER_GROUP_HEADER,
    DEAD_LETTER_REASON_HEADER,
    ERROR_HEADER,
    ORIGIN_OFFSET_HEADER,
    ORIGIN_PARTITION_HEADER,
    ORIGIN_TOPIC_HEADER,
    RETRY_DUE_HEADER,
    RETRY_GROUP_HEADER,
    Forward,
    HeaderValue,
    Received,
    Record,
    build_consumer,
    now_ms,
)
from imgpipe.runtime.logs import log_context
from imgpipe.runtime.settings import RuntimeSettings
from imgpipe.runtime.telemetry import context_from_headers, current_trace_id, inject_current_context

log = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)

Handler = Callable[[Record], Iterable[Forward]]

MESSAGES = Counter(
    "imgpipe_consumer_messages_total",
    "Messages taken from Kafka, by outcome (ok, retry_scheduled, dead_lettered, skipped)",
    ["group", "topic", "outcome"],
)
HANDLER_SECONDS = Histogram(
    "imgpipe_handler_duration_seconds",
    "Time spent in the handler per message",
    ["group", "topic"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
CONSUMER_LAG = Gauge(
    "imgpipe_consumer_lag", "Messages behind the partition's high watermark", ["group", "topic", "partition"]
)
HELD_PARTITIONS = Gauge(
    "imgpipe_retry_held_partitions", "Retry-tier partitions paused until their head is due", ["group"]
)

# The runtime's own bookkeeping headers; the rest of a message's headers travel with it unchanged.
_RUNTIME_HEADERS = frozenset(
    {ATTEMPT_HEADER, RETRY_GROUP_HEADER, RETRY_DUE_HEADER, ERROR_HEADER, DEAD_LETTER_REASON_HEADER}
)
_MAX_REASON_CHARS = 2_000


@dataclass(frozen=True)
class RetryTier:
    topic: str
    delay_seconds: float


@dataclass(frozen=True)
class FailureRouting:
    """Where failed messages go: retry tiers in order of use, then the dead-letter topic."""

    retry_tiers: tuple[RetryTier, ...]
    dead_letter_topic: str

    def tier_after(self, attempt: int) -> RetryTier | None:
        """The tier a message goes to after failing its `attempt`-th try, or None when exhausted."""
        return self.retry_tiers[attempt - 1] if attempt <= len(self.retry_tiers) else None


class _Outcome(Enum):
    OK = "ok"
    RETRY_SCHEDULED = "retry_scheduled"
    DEAD_LETTERED = "dead_lettered"
    SKIPPED = "skipped"  # a retry-tier copy meant for another group
    HELD = "held"  # a retry-tier copy not due yet: its partition is paused and rewound


@dataclass
class _BatchProgress:
    """Per partition: the first offset seen (to rewind to) and the next offset to store."""

    first_offset: dict[tuple[str, int], int] = field(default_factory=dict)
    next_offset: dict[tuple[str, int], int] = field(default_factory=dict)
    held: set[tuple[str, int]] = field(default_factory=set)


class ConsumeLoop:
    def __init__(
        self,
        *,
        settings: RuntimeSettings,
        group_id: str,
        topics: Sequence[str],
        handler: Handler,
        producer: Producer,
        routing: FailureRouting,
        health: Health | None = None,
        before_commit: Callable[[], None] | None = None,
    ) -> None:
        """`before_commit`, if given, runs once per batch after the handler saw every message and
        before offsets are stored: a service that writes in batches (the projector) writes there.
        If it raises, the whole batch is rewound and handled again."""
        self._settings = settings
        self._group_id = group_id
        self._topics = list(topics)
        self._handler = handler
        self._producer = producer
        self._routing = routing
        self._health = health
        self._before_commit = before_commit
        self._failed_batches = 0
        self._tier_topics = {tier.topic for tier in routing.retry_tiers}
        self._stop = threading.Event()
        self._joined = threading.Event()
        self._held_until_ms: dict[tuple[str, int], int] = {}
        self._delivery_errors: list[KafkaError] = []
        self._consumer = build_consumer(
            settings, group_id, client_id=f"{settings.service_name}-{group_id}", stats_cb=self._record_stats
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish the message in hand, deliver its forwards and leave the group."""
        self._stop.set()

    def has_joined(self) -> bool:
        """Readiness: the group coordinator has given this consumer an assignment (maybe empty)."""
        return self._joined.is_set()

    def run(self) -> None:
        self._consumer.subscribe(
            self._topics + sorted(self._tier_topics),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        log.info("consuming", extra={"group": self._group_id, "topics": self._topics})
        try:
            while not self._stop.is_set():
                if self._health is not None:
                    self._health.beat()
                self._resume_due_partitions()
                messages = self._next_batch()
                if messages:
                    self._process_batch(messages)
        finally:
            self._producer.flush(self._settings.producer_flush_seconds)
            # close() commits the stored offsets and leaves the group, handing partitions back now
            # rather than after the session timeout.
            self._consumer.close()
            log.info("consumer closed", extra={"group": self._group_id})

    def _next_batch(self) -> list[Message]:
        """Wait up to the poll interval for one message, then add what else is already fetched, up
        to the batch size. (A single consume() for the whole batch waits out the interval unless the
        batch fills: at a low rate every hop would add up to that interval to a task's latency.)"""
        first = self._consumer.consume(num_messages=1, timeout=self._settings.consumer_poll_seconds)
        if not first or self._settings.consumer_batch_size == 1:
            return first
        return first + self._consumer.consume(num_messages=self._settings.consumer_batch_size - 1, timeout=0)

    # -- batch processing --------------------------------------------------------------------

    def _process_batch(self, messages: Sequence[Message]) -> None:
        progress = _BatchProgress()
        for message in messages:
            if self._stop.is_set():
                break  # not stored, so handed back to whoever owns the partition next
            if not self._usable(message):
                continue
            received = Received.of(message)
            partition = (received.topic, received.partition)
            if partition in progress.held:
                continue  # rewound to an earlier offset; these come again once resumed
            progress.first_offset.setdefault(partition, received.offset)
            outcome = self._dispatch(received)
            if outcome is _Outcome.HELD:
                progress.held.add(partition)
                continue
            MESSAGES.labels(self._group_id, received.topic, outcome.value).inc()
            progress.next_offset[partition] = received.offset + 1

        if self._complete_batch():
            self._failed_batches = 0
            offsets = [TopicPartition(t, p, o) for (t, p), o in progress.next_offset.items()]
            if offsets:
                self._consumer.store_offsets(offsets=offsets)
        else:
            self._rewind(progress)
            # Back off (still answering stop and liveness) so a dependency that is down is not hammered.
            self._failed_batches += 1
            self._stop.wait(min(30.0, 0.5 * 2 ** min(self._failed_batches, 6)))

    def _complete_batch(self) -> bool:
        """Run the service's batch commit, then wait for every forward; False means redo the batch."""
        try:
            if self._before_commit is not None:
                self._before_commit()
        except Exception:
            log.exception("batch commit failed; rewinding")
            self._deliver_all()  # settle what was produced; the redo may duplicate it, never lose it
            return False
        return self._deliver_all()

    def _usable(self, message: Message) -> bool:
        error = message.error()
        if error is None:
            return True
        if error.fatal():
            raise KafkaException(error)
        log.warning("consumer error: %s", error)
        return False

    def _dispatch(self, message: Received) -> _Outcome:
        headers = message.headers
        if message.topic in self._tier_topics:
            if headers.get(RETRY_GROUP_HEADER, b"").decode() != self._group_id:
                return _Outcome.SKIPPED
            due_ms = int(headers.get(RETRY_DUE_HEADER, b"0"))
            if due_ms > now_ms():
                self._hold(message, due_ms)
                return _Outcome.HELD
        record = _as_record(message)
        span_attributes: dict[str, str | int] = {
            "messaging.system": "kafka",
            "messaging.destination.name": record.topic,
            "messaging.consumer.group.name": self._group_id,
            "messaging.kafka.message.offset": record.offset,
        }
        with (
            _tracer.start_as_current_span(
                f"process {record.topic}",
                context=context_from_headers(message.headers),
                kind=SpanKind.CONSUMER,
                attributes=span_attributes,
            ),
            log_context(task_id=record.key_text, trace_id=current_trace_id()),
        ):
            started = time.perf_counter()
            try:
                forwards = list(self._handler(record))
            except PoisonMessage as exc:
                self._dead_letter(message, f"poison message: {exc}")
                return _Outcome.DEAD_LETTERED
            except Exception as exc:
                return self._retry_or_dead_letter(message, record.attempt, exc)
            finally:
                HANDLER_SECONDS.labels(self._group_id, record.topic).observe(time.perf_counter() - started)
            for forward in forwards:
                forward_headers = dict(forward.headers)
                inject_current_context(forward_headers)
                self._produce(forward.topic, forward.key, forward.value, forward_headers)
        return _Outcome.OK

    def _retry_or_dead_letter(self, message: Received, attempt: int, exc: Exception) -> _Outcome:
        reason = f"{type(exc).__name__}: {exc}"[:_MAX_REASON_CHARS]
        tier = self._routing.tier_after(attempt)
        if tier is None:
            self._dead_letter(message, f"retries exhausted after {attempt} attempts: {reason}")
            return _Outcome.DEAD_LETTERED
        log.warning(
            "attempt %d failed, retrying in %ss: %s",
            attempt,
            tier.delay_seconds,
            reason,
            exc_info=not isinstance(exc, TransientError),
        )
        retry_headers: dict[str, HeaderValue] = {
            **_passthrough(message.headers),
            **_origin(message),
            ATTEMPT_HEADER: str(attempt + 1),
            RETRY_GROUP_HEADER: self._group_id,
            RETRY_DUE_HEADER: str(now_ms() + int(tier.delay_seconds * 1000)),
            ERROR_HEADER: reason,
        }
        self._produce(tier.topic, message.key, message.value, retry_headers)
        return _Outcome.RETRY_SCHEDULED

    def _dead_letter(self, message: Received, reason: str) -> None:
        log.error("dead-lettering message: %s", reason)
        dead_letter_headers: dict[str, HeaderValue] = {
            **_passthrough(message.headers),
            **_origin(message),
            DEAD_LETTER_REASON_HEADER: reason[:_MAX_REASON_CHARS],
            DEAD_LETTER_GROUP_HEADER: self._group_id,
        }
        self._produce(self._routing.dead_letter_topic, message.key, message.value, dead_letter_headers)

    # -- producing ---------------------------------------------------------------------------

    def _produce(
        self, topic: str, key: str | bytes | None, value: bytes | None, headers: Mapping[str, HeaderValue]
    ) -> None:
        while True:
            try:
                self._producer.produce(
                    topic, value=value, key=key, headers=list(headers.items()), on_delivery=self._on_delivery
                )
                return
            except BufferError:
                # The local queue is full: serve delivery reports to make room, then try again.
                self._producer.poll(0.5)

    def _on_delivery(self, error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            self._delivery_errors.append(error)

    def _deliver_all(self) -> bool:
        """Wait for every message produced in this batch; False if any was not acknowledged."""
        undelivered = self._producer.flush(self._settings.producer_flush_seconds)
        errors, self._delivery_errors = self._delivery_errors, []
        if undelivered or errors:
            log.error("forwards not acknowledged (%d queued, errors: %s); rewinding", undelivered, errors)
            return False
        return True

    def _rewind(self, progress: _BatchProgress) -> None:
        for (topic, partition), offset in progress.first_offset.items():
            if (topic, partition) not in progress.held:
                self._consumer.seek(TopicPartition(topic, partition, offset))

    # -- retry-tier holds --------------------------------------------------------------------

    def _hold(self, message: Received, due_ms: int) -> None:
        partition = TopicPartition(message.topic, message.partition, message.offset)
        self._consumer.pause([partition])
        self._consumer.seek(partition)
        self._held_until_ms[(message.topic, message.partition)] = due_ms
        HELD_PARTITIONS.labels(self._group_id).set(len(self._held_until_ms))

    def _resume_due_partitions(self) -> None:
        now = now_ms()
        due = [key for key, until in self._held_until_ms.items() if until <= now]
        if due:
            self._consumer.resume([TopicPartition(topic, partition) for topic, partition in due])
            for key in due:
                del self._held_until_ms[key]
            HELD_PARTITIONS.labels(self._group_id).set(len(self._held_until_ms))

    def _on_assign(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        self._joined.set()
        log.info("assigned %s", [f"{p.topic}[{p.partition}]" for p in partitions])

    def _on_revoke(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        for p in partitions:
            self._held_until_ms.pop((p.topic, p.partition), None)
        log.info("revoked %s", [f"{p.topic}[{p.partition}]" for p in partitions])

    # -- metrics -----------------------------------------------------------------------------

    def _record_stats(self, stats_json: str) -> None:
        """librdkafka's periodic statistics (served inside consume()): export lag per partition."""
        stats = json.loads(stats_json)
        for topic, topic_stats in stats.get("topics", {}).items():
            for partition, partition_stats in topic_stats.get("partitions", {}).items():
                lag = partition_stats.get("consumer_lag", -1)
                if partition != "-1" and lag >= 0:
                    CONSUMER_LAG.labels(self._group_id, topic, partition).set(lag)


def _as_record(message: Received) -> Record:
    """A retried copy is presented as the original: its first topic, partition and offset."""
    return Record(
        topic=message.header(ORIGIN_TOPIC_HEADER) or message.topic,
        partition=int(message.header(ORIGIN_PARTITION_HEADER) or message.partition),
        offset=int(message.header(ORIGIN_OFFSET_HEADER) or message.offset),
        key=message.key,
        value=message.value,
        headers=message.headers,
        timestamp_ms=message.timestamp_ms,
        attempt=int(message.header(ATTEMPT_HEADER) or 1),
    )


def _passthrough(headers: Mapping[str, bytes]) -> dict[str, HeaderValue]:
    return {name: value for name, value in headers.items() if name not in _RUNTIME_HEADERS}


def _origin(message: Received) -> dict[str, HeaderValue]:
    """Where the message first arrived; kept as it was when the message is already a retry copy."""
    record = _as_record(message)
    return {
        ORIGIN_TOPIC_HEADER: record.topic,
        ORIGIN_PARTITION_HEADER: str(record.partition),
        ORIGIN_OFFSET_HEADER: str(record.offset),
    }
