"""The at-least-once consume loop every Kafka-driven service runs.

With one message in flight (the default): for each batch polled, call the handler per message,
produce what it returns (or route the failure), wait until the broker has acknowledged all of it,
and only then store the offsets. A crash anywhere before that redelivers the batch; handlers are
therefore written idempotent.

With `max_in_flight` > 1 (the stages): up to that many handler calls run at once in threads,
across and within partitions. A message is finished when its handler returned and the broker
acknowledged what it produced; a partition's offset is stored only up to its first unfinished
message (runtime/offsets.py), with the finished ones beyond it named in the commit metadata so a
restart runs again only the unfinished. When every slot is taken the loop pauses its partitions
and keeps polling (so a long call never breaks max.poll.interval.ms); it resumes them as slots
free. On stop it takes nothing new and drains everything in flight. See docs/decisions/0003.

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
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from prometheus_client import Counter, Gauge, Histogram

from imgpipe.runtime.brake import DeadLetterBrake
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
from imgpipe.runtime.offsets import PartitionWindow, parse_done
from imgpipe.runtime.settings import RuntimeSettings
from imgpipe.runtime.telemetry import context_from_headers, current_trace_id, inject_current_context

log = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)

Handler = Callable[[Record], Iterable[Forward]]
_Produce = Callable[[str, str | bytes | None, bytes | None, Mapping[str, HeaderValue]], None]

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
IN_FLIGHT = Gauge("imgpipe_consumer_in_flight", "Messages taken and not yet finished", ["group"])
BACKPRESSURE_PAUSES = Counter(
    "imgpipe_consumer_backpressure_pauses_total",
    "Times every slot was taken and the loop paused its partitions",
    ["group"],
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
    REPLAY_SKIPPED = "replay_skipped"  # finished by the partition's previous owner (commit metadata)
    HELD = "held"  # a retry-tier copy not due yet: its partition is paused and rewound


# What the consumer really handled: the dead-letter brake's share is of these.
_HANDLED = frozenset({_Outcome.OK, _Outcome.RETRY_SCHEDULED, _Outcome.DEAD_LETTERED})


@dataclass
class _BatchProgress:
    """Per partition: the first offset seen (to rewind to) and the next offset to store."""

    first_offset: dict[tuple[str, int], int] = field(default_factory=dict)
    next_offset: dict[tuple[str, int], int] = field(default_factory=dict)
    held: set[tuple[str, int]] = field(default_factory=set)


class _Slot:
    """One message taken with many in flight: finished once its handler returned and the broker
    acknowledged all it produced. Delivery reports arrive on the loop's thread, the handler's
    outcome on a worker thread, hence the lock."""

    def __init__(self, message: Received) -> None:
        self.message = message
        self.key = (message.topic, message.partition)
        self.redos = 0
        self.redo_at: float | None = None  # monotonic time of the next try after a failed delivery
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self.future: Future[_Outcome] | None = None
        self._unacknowledged = 0
        self._delivery_failed = False

    def retry_later(self, now: float) -> None:
        self.redos += 1
        self.redo_at = now + min(30.0, 0.5 * 2 ** min(self.redos, 6))
        self._reset()

    def producing(self) -> None:
        with self._lock:
            self._unacknowledged += 1

    def on_delivery(self, error: KafkaError | None, _message: Message) -> None:
        with self._lock:
            self._unacknowledged -= 1
            if error is not None:
                log.error("forward not acknowledged: %s", error)
                self._delivery_failed = True

    def state(self) -> _Outcome | bool | None:
        """None while running; the outcome once finished; False when it must be run again."""
        if self.future is None or not self.future.done():
            return None
        if self.future.exception() is not None:
            log.error("handling failed outside the handler", exc_info=self.future.exception())
            return False
        with self._lock:
            if self._delivery_failed:
                return False
            return self.future.result() if self._unacknowledged == 0 else None


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
        max_in_flight: int = 1,
    ) -> None:
        """`before_commit`, if given, runs once per batch after the handler saw every message and
        before offsets are stored: a service that writes in batches (the projector) writes there.
        If it raises, the whole batch is rewound and handled again. It needs `max_in_flight` 1.

        `max_in_flight` > 1 runs that many handler calls at once, in threads: the handler must be
        thread-safe (CPU-bound work belongs in a process pool behind it, see stages/pool.py)."""
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, not {max_in_flight}")
        if max_in_flight > 1 and before_commit is not None:
            raise ValueError("before_commit works per batch; it needs max_in_flight=1")
        self._settings = settings
        self._group_id = group_id
        self._topics = list(topics)
        self._handler = handler
        self._producer = producer
        self._routing = routing
        self._health = health
        self._before_commit = before_commit
        self._max_in_flight = max_in_flight
        self._failed_batches = 0
        self._brake = DeadLetterBrake(
            group_id,
            max_ratio=settings.dead_letter_max_ratio or None,
            max_consecutive=settings.dead_letter_max_consecutive or None,
            window=settings.dead_letter_window,
        )
        self._tier_topics = {tier.topic for tier in routing.retry_tiers}
        self._stop = threading.Event()
        self._joined = threading.Event()
        self._held_until_ms: dict[tuple[str, int], int] = {}
        self._delivery_errors: list[KafkaError] = []
        # Many in flight: per partition its window of offsets, the slots taken and not finished, the
        # partitions paused because every slot is taken, and a wake-up for finished handlers.
        self._windows: dict[tuple[str, int], PartitionWindow] = {}
        self._slots: list[_Slot] = []
        self._backpressured: set[tuple[str, int]] = set()
        self._wake = threading.Event()
        self._workers = (
            ThreadPoolExecutor(max_in_flight, thread_name_prefix=f"{group_id}-handler")
            if max_in_flight > 1
            else None
        )
        self._consumer = build_consumer(
            settings, group_id, client_id=f"{settings.service_name}-{group_id}", stats_cb=self._record_stats
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish what it has in hand, deliver its forwards and leave the group."""
        self._stop.set()
        self._wake.set()

    def has_joined(self) -> bool:
        """Readiness: the group coordinator has given this consumer an assignment (maybe empty)."""
        return self._joined.is_set()

    def paused_for_backpressure(self) -> frozenset[tuple[str, int]]:
        """The partitions paused because every slot is taken (for tests and introspection)."""
        return frozenset(self._backpressured)  # one C-level copy: safe to call from another thread

    def run(self) -> None:
        self._consumer.subscribe(
            self._topics + sorted(self._tier_topics),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        log.info(
            "consuming",
            extra={"group": self._group_id, "topics": self._topics, "max_in_flight": self._max_in_flight},
        )
        try:
            if self._workers is None:
                self._run_batches()
            else:
                self._run_many_in_flight()
        finally:
            self._producer.flush(self._settings.producer_flush_seconds)
            if self._workers is not None:
                self._workers.shutdown(wait=False, cancel_futures=True)
            # close() commits the stored offsets and leaves the group, handing partitions back now
            # rather than after the session timeout.
            self._consumer.close()
            log.info("consumer closed", extra={"group": self._group_id})

    def _run_batches(self) -> None:
        while not self._stop.is_set():
            if self._health is not None:
                self._health.beat()
            self._resume_due_partitions()
            messages = self._next_batch()
            if messages:
                self._process_batch(messages)

    def _next_batch(self, limit: int | None = None, timeout: float | None = None) -> list[Message]:
        """Wait up to the poll interval for one message, then add what else is already fetched, up
        to the batch size. (A single consume() for the whole batch waits out the interval unless the
        batch fills: at a low rate every hop would add up to that interval to a task's latency.)"""
        limit = self._settings.consumer_batch_size if limit is None else limit
        first = self._consumer.consume(
            num_messages=1, timeout=self._settings.consumer_poll_seconds if timeout is None else timeout
        )
        if not first or limit == 1:
            return first
        return first + self._consumer.consume(num_messages=limit - 1, timeout=0)

    # -- batch processing (one message in flight) -------------------------------------------

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
            outcome = self._triage(received) or self._process(received, self._on_delivery)
            if outcome is _Outcome.HELD:
                progress.held.add(partition)
                continue
            MESSAGES.labels(self._group_id, received.topic, outcome.value).inc()
            self._count(outcome)  # may stop the loop: this batch's offsets are then not stored
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

    # -- many in flight ----------------------------------------------------------------------

    def _run_many_in_flight(self) -> None:
        stopping_logged = False
        while True:
            stopping = self._stop.is_set()
            if self._health is not None:
                self._health.beat()
            self._wake.clear()
            self._producer.poll(0)  # serve delivery reports: they finish slots
            self._settle()
            if stopping:
                if not stopping_logged:
                    log.info("stopping: draining %d messages in flight", len(self._running()))
                    stopping_logged = True
                if not self._running():
                    self._store_commit_points()
                    return
            self._resume_due_partitions()
            self._start_due_redos(stopping)
            free = 0 if stopping else self._max_in_flight - len(self._slots)
            self._apply_backpressure(paused=free <= 0)
            if free <= 0:
                # Wait for a slot (a finished handler wakes us); poll anyway to serve the group.
                self._wake.wait(self._settings.consumer_poll_seconds)
                messages = self._consumer.consume(num_messages=1, timeout=0)
            else:
                # With work in flight, poll briefly so finished work frees its slot soon.
                timeout = min(self._settings.consumer_poll_seconds, 0.05) if self._slots else None
                messages = self._next_batch(limit=free, timeout=timeout)
            rewound: set[tuple[str, int]] = set()
            for message in messages:
                if not self._usable(message):
                    continue
                received = Received.of(message)
                key = (received.topic, received.partition)
                if key in rewound or key not in self._windows:
                    continue  # behind a rewind (comes again), or of a partition no longer ours
                if free <= 0:
                    self._seek_back(received)  # fetched before the pause took effect
                    rewound.add(key)
                    continue
                if self._take(received):
                    free -= 1
                else:
                    rewound.add(key)

    def _take(self, message: Received) -> bool:
        """Start a message, or settle it at once; False when it was held (its partition rewound)."""
        window = self._windows[(message.topic, message.partition)]
        outcome = self._triage(message)
        if outcome is _Outcome.HELD:
            return False
        if outcome is None and window.finished_before(message.offset):
            outcome = _Outcome.REPLAY_SKIPPED
        window.take(message.offset)
        if outcome is not None:
            window.finish(message.offset)
            MESSAGES.labels(self._group_id, message.topic, outcome.value).inc()
            return True
        slot = _Slot(message)
        self._slots.append(slot)
        self._submit(slot)
        return True

    def _submit(self, slot: _Slot) -> None:
        assert self._workers is not None
        slot.future = self._workers.submit(self._process, slot.message, slot.on_delivery, slot.producing)
        slot.future.add_done_callback(lambda _future: self._wake.set())
        IN_FLIGHT.labels(self._group_id).set(len(self._slots))

    def _running(self) -> list[_Slot]:
        return [slot for slot in self._slots if slot.redo_at is None]

    def _settle(self) -> None:
        """Finish slots whose work is done, schedule a redo for those whose forwards failed, and
        store each changed partition's new commit point."""
        now = time.monotonic()
        still_open: list[_Slot] = []
        for slot in self._slots:
            state = slot.state() if slot.redo_at is None else None
            if state is None:
                still_open.append(slot)
            elif state is False:
                slot.retry_later(now)  # as the batch path rewinds: run it again, after a backoff
                still_open.append(slot)
            else:
                assert isinstance(state, _Outcome)
                MESSAGES.labels(self._group_id, slot.message.topic, state.value).inc()
                self._count(state)  # may stop the loop before this offset counts as finished
                window = self._windows.get(slot.key)
                if window is not None:
                    window.finish(slot.message.offset)
        if len(still_open) != len(self._slots):
            self._slots = still_open
            IN_FLIGHT.labels(self._group_id).set(len(self._slots))
        self._store_commit_points()

    def _count(self, outcome: _Outcome) -> None:
        if outcome in _HANDLED:
            self._brake.record(outcome is _Outcome.DEAD_LETTERED)

    def _store_commit_points(self, keys: Iterable[tuple[str, int]] | None = None) -> list[TopicPartition]:
        offsets = []
        for key in list(self._windows) if keys is None else keys:
            point = self._windows[key].commit_point()
            if point is not None:
                offsets.append(TopicPartition(key[0], key[1], point.offset, metadata=point.metadata()))
        if offsets:
            self._consumer.store_offsets(offsets=offsets)
        return offsets

    def _start_due_redos(self, stopping: bool) -> None:
        now = time.monotonic()
        for slot in self._slots:
            if slot.redo_at is not None and (stopping or slot.redo_at <= now):
                if stopping:
                    continue  # left unstored: whoever owns the partition next runs it
                slot.redo_at = None
                self._submit(slot)

    def _apply_backpressure(self, paused: bool) -> None:
        """Every slot taken (or stopping): pause the partitions; slots free again: resume them."""
        if paused:
            more = [key for key in self._windows if key not in self._held_until_ms]
            more = [key for key in more if key not in self._backpressured]
            if more:
                if not self._stop.is_set():
                    BACKPRESSURE_PAUSES.labels(self._group_id).inc()
                self._consumer.pause([TopicPartition(t, p) for t, p in more])
                self._backpressured.update(more)
        elif self._backpressured:
            # A held tier partition stays paused: its own due time resumes it.
            resume = [key for key in self._backpressured if key not in self._held_until_ms]
            self._consumer.resume([TopicPartition(t, p) for t, p in resume])
            self._backpressured.clear()

    def _seek_back(self, message: Received) -> None:
        self._consumer.seek(TopicPartition(message.topic, message.partition, message.offset))

    def _drain(self, keys: set[tuple[str, int]]) -> None:
        """Before partitions go (a rebalance): wait for their messages in flight, then commit."""
        deadline = time.monotonic() + self._settings.producer_flush_seconds
        while time.monotonic() < deadline:
            self._producer.poll(0.05)
            self._settle()
            if not any(slot.key in keys and slot.redo_at is None for slot in self._slots):
                break
        offsets = self._store_commit_points(keys & self._windows.keys())
        if offsets:
            try:
                self._consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as exc:
                log.warning("commit before handing partitions back failed: %s", exc)

    # -- one message ----------------------------------------------------------------------------

    def _usable(self, message: Message) -> bool:
        error = message.error()
        if error is None:
            return True
        if error.fatal():
            raise KafkaException(error)
        log.warning("consumer error: %s", error)
        return False

    def _triage(self, message: Received) -> _Outcome | None:
        """A retry-tier copy meant for another group is skipped and one not due yet is held (its
        partition paused and rewound to it); None: handle the message."""
        if message.topic not in self._tier_topics:
            return None
        if message.headers.get(RETRY_GROUP_HEADER, b"").decode() != self._group_id:
            return _Outcome.SKIPPED
        due_ms = int(message.headers.get(RETRY_DUE_HEADER, b"0"))
        if due_ms > now_ms():
            self._hold(message, due_ms)
            return _Outcome.HELD
        return None

    def _process(
        self,
        message: Received,
        on_delivery: Callable[[KafkaError | None, Message], None],
        producing: Callable[[], None] | None = None,
    ) -> _Outcome:
        """Run the handler in the message's own trace, produce its forwards or route its failure.
        `producing` (if given) is told of each message produced before it is handed to the producer."""
        record = _as_record(message)
        span_attributes: dict[str, str | int] = {
            "messaging.system": "kafka",
            "messaging.destination.name": record.topic,
            "messaging.consumer.group.name": self._group_id,
            "messaging.kafka.message.offset": record.offset,
        }
        if record.key_text is not None:
            span_attributes["messaging.kafka.message.key"] = record.key_text  # the task id

        def produce(
            topic: str, key: str | bytes | None, value: bytes | None, headers: Mapping[str, HeaderValue]
        ) -> None:
            if producing is not None:
                producing()
            self._produce(topic, key, value, headers, on_delivery)

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
                self._dead_letter(message, f"poison message: {exc}", produce)
                return _Outcome.DEAD_LETTERED
            except Exception as exc:
                return self._retry_or_dead_letter(message, record.attempt, exc, produce)
            finally:
                HANDLER_SECONDS.labels(self._group_id, record.topic).observe(time.perf_counter() - started)
            for forward in forwards:
                forward_headers = dict(forward.headers)
                inject_current_context(forward_headers)
                produce(forward.topic, forward.key, forward.value, forward_headers)
        return _Outcome.OK

    def _retry_or_dead_letter(
        self, message: Received, attempt: int, exc: Exception, produce: _Produce
    ) -> _Outcome:
        reason = f"{type(exc).__name__}: {exc}"[:_MAX_REASON_CHARS]
        tier = self._routing.tier_after(attempt)
        if tier is None:
            self._dead_letter(message, f"retries exhausted after {attempt} attempts: {reason}", produce)
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
        produce(tier.topic, message.key, message.value, retry_headers)
        return _Outcome.RETRY_SCHEDULED

    def _dead_letter(self, message: Received, reason: str, produce: _Produce) -> None:
        log.error("dead-lettering message: %s", reason)
        dead_letter_headers: dict[str, HeaderValue] = {
            **_passthrough(message.headers),
            **_origin(message),
            DEAD_LETTER_REASON_HEADER: reason[:_MAX_REASON_CHARS],
            DEAD_LETTER_GROUP_HEADER: self._group_id,
        }
        produce(self._routing.dead_letter_topic, message.key, message.value, dead_letter_headers)

    # -- producing ---------------------------------------------------------------------------

    def _produce(
        self,
        topic: str,
        key: str | bytes | None,
        value: bytes | None,
        headers: Mapping[str, HeaderValue],
        on_delivery: Callable[[KafkaError | None, Message], None],
    ) -> None:
        while True:
            try:
                self._producer.produce(
                    topic, value=value, key=key, headers=list(headers.items()), on_delivery=on_delivery
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
        self._backpressured.discard((message.topic, message.partition))
        HELD_PARTITIONS.labels(self._group_id).set(len(self._held_until_ms))

    def _resume_due_partitions(self) -> None:
        now = now_ms()
        due = [key for key, until in self._held_until_ms.items() if until <= now]
        if due:
            # If every slot is taken meanwhile, the next turn pauses it again for backpressure.
            self._consumer.resume([TopicPartition(topic, partition) for topic, partition in due])
            for key in due:
                del self._held_until_ms[key]
            HELD_PARTITIONS.labels(self._group_id).set(len(self._held_until_ms))

    # -- rebalances --------------------------------------------------------------------------

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        if self._workers is not None and partitions:
            self._open_windows(consumer, partitions)
        self._joined.set()
        log.info("assigned %s", [f"{p.topic}[{p.partition}]" for p in partitions])

    def _open_windows(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        """A window per new partition, knowing what its previous owner finished past its commit."""
        try:
            committed = consumer.committed(partitions, timeout=10)
        except KafkaException as exc:
            log.warning("could not read committed offsets (%s); finished messages may run again", exc)
            committed = partitions
        for p in committed:
            done = parse_done(p.metadata, p.offset) if p.offset >= 0 else frozenset()
            self._windows[(p.topic, p.partition)] = PartitionWindow(done)
        if self._stop.is_set() or len(self._slots) >= self._max_in_flight:
            self._apply_backpressure(paused=True)  # new partitions wait for a slot like the rest

    def _on_revoke(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        keys = {(p.topic, p.partition) for p in partitions}
        if self._workers is not None:
            self._drain(keys)
        self._forget(keys)
        log.info("revoked %s", [f"{p.topic}[{p.partition}]" for p in partitions])

    def _on_lost(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        # Another member owns them already: what is in flight here can no longer be committed.
        self._forget({(p.topic, p.partition) for p in partitions})
        log.warning("lost %s", [f"{p.topic}[{p.partition}]" for p in partitions])

    def _forget(self, keys: set[tuple[str, int]]) -> None:
        for key in keys:
            self._held_until_ms.pop(key, None)
            self._windows.pop(key, None)
            self._backpressured.discard(key)
        # Their handlers may still be running; their results are simply not stored.
        self._slots = [slot for slot in self._slots if slot.key not in keys]
        IN_FLIGHT.labels(self._group_id).set(len(self._slots))

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
