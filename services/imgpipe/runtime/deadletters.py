"""Dead letters for operators: list and show what the dead-letter topic holds, replay a selection.

The dead-letter topic(s) are the registry's (`TopicKey.DEAD_LETTER`). Reading uses a fresh consumer
that joins no group and commits nothing: it is assigned each partition from its beginning and stops
at the high watermark the partition had when the read began. A dead letter is named by where it sits,
"<topic>:<partition>:<offset>", and carries what the consume loop (and the callback app) wrote in its
headers: the reason, the consumer group, the origin topic/partition/offset.

A replay produces the dead letter's original key and value to its origin topic with its headers minus
the runtime's bookkeeping (attempt, retry, error, dead-letter and origin headers, so the message starts
over as a first attempt), plus `imgpipe-replayed-from` (the dead letter's id) and `imgpipe-replay-count`
(one more than the dead letter carried: a replayed message dead-lettered again shows it). Dead letters
are not removed by a replay (the topic is a log, kept 30 days); processing is idempotent per task and
stage, so replaying one twice does no harm. An entry whose origin is missing or not a registered topic
is refused, and so is the whole request: nothing is produced.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from prometheus_client import Counter

from imgpipe.contracts.registry import Registry, TopicKey, default_registry
from imgpipe.runtime.kafka import (
    ATTEMPT_HEADER,
    DEAD_LETTER_GROUP_HEADER,
    DEAD_LETTER_REASON_HEADER,
    ERROR_HEADER,
    ORIGIN_OFFSET_HEADER,
    ORIGIN_PARTITION_HEADER,
    ORIGIN_TOPIC_HEADER,
    REPLAY_COUNT_HEADER,
    REPLAYED_FROM_HEADER,
    RETRY_DUE_HEADER,
    RETRY_GROUP_HEADER,
    ReadToEndFailed,
    Received,
    build_producer,
    client_config,
    partition_ends,
    read_until,
)
from imgpipe.runtime.settings import RuntimeSettings

REPLAYED = Counter(
    "imgpipe_dead_letters_replayed_total", "Dead letters produced again to their origin topic", ["topic"]
)

DEFAULT_LIMIT = 100
# Headers a replay drops: the copy starts over as a first attempt on its origin topic.
_BOOKKEEPING_HEADERS = frozenset(
    {
        ATTEMPT_HEADER,
        RETRY_GROUP_HEADER,
        RETRY_DUE_HEADER,
        ERROR_HEADER,
        DEAD_LETTER_REASON_HEADER,
        DEAD_LETTER_GROUP_HEADER,
        ORIGIN_TOPIC_HEADER,
        ORIGIN_PARTITION_HEADER,
        ORIGIN_OFFSET_HEADER,
        REPLAYED_FROM_HEADER,
        REPLAY_COUNT_HEADER,
    }
)
_DIGITS = re.compile(r"[0-9]+")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class DeadLetterError(Exception):
    """Base of the errors below."""


class InvalidDeadLetterId(DeadLetterError, ValueError):
    """Not "<topic>:<partition>:<offset>" of a dead-letter topic."""


class DeadLetterNotFound(DeadLetterError, LookupError):
    """No dead letter at that position (never written, or past the topic's retention)."""


class ReplayRefused(DeadLetterError):
    """Some selected dead letters cannot be replayed; `refused` maps each id to why. Nothing was sent."""

    def __init__(self, refused: Mapping[str, str]) -> None:
        self.refused = dict(refused)
        super().__init__(
            "not replayed (nothing was sent): " + "; ".join(f"{id_}: {why}" for id_, why in refused.items())
        )


class DeadLettersUnavailable(DeadLetterError):
    """Kafka did not answer, a read did not reach the end in time, or a replay was not acknowledged."""


@dataclass(frozen=True)
class DeadLetter:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None  # when it was dead-lettered (the producer's time); None if unknown
    key: bytes | None
    value: bytes | None
    headers: Mapping[str, bytes] = field(hash=False)

    @classmethod
    def of(cls, message: Received) -> DeadLetter:
        return cls(
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            timestamp_ms=message.timestamp_ms if message.timestamp_ms > 0 else None,
            key=message.key,
            value=message.value,
            headers=message.headers,
        )

    @property
    def id(self) -> str:
        return format_id(self.topic, self.partition, self.offset)

    def header(self, name: str) -> str | None:
        raw = self.headers.get(name)
        return None if raw is None else raw.decode("utf-8", errors="replace")

    @property
    def reason(self) -> str | None:
        return self.header(DEAD_LETTER_REASON_HEADER)

    @property
    def group(self) -> str | None:
        return self.header(DEAD_LETTER_GROUP_HEADER)

    @property
    def origin_topic(self) -> str | None:
        return self.header(ORIGIN_TOPIC_HEADER) or None

    @property
    def origin_partition(self) -> int | None:
        return _int_or_none(self.header(ORIGIN_PARTITION_HEADER))

    @property
    def origin_offset(self) -> int | None:
        return _int_or_none(self.header(ORIGIN_OFFSET_HEADER))

    @property
    def replay_count(self) -> int:
        """How often the message was replayed before it landed here again."""
        return _int_or_none(self.header(REPLAY_COUNT_HEADER)) or 0

    @property
    def replayed_from(self) -> str | None:
        return self.header(REPLAYED_FROM_HEADER)

    @property
    def key_text(self) -> str | None:
        return None if self.key is None else self.key.decode("utf-8", errors="replace")

    @property
    def payload_bytes(self) -> int:
        return len(self.value or b"")

    @property
    def dead_lettered_at(self) -> datetime | None:
        return None if self.timestamp_ms is None else datetime.fromtimestamp(self.timestamp_ms / 1000, UTC)

    def age_seconds(self, now: datetime | None = None) -> float | None:
        if self.dead_lettered_at is None:
            return None
        return max(0.0, ((now or datetime.now(UTC)) - self.dead_lettered_at).total_seconds())

    def summary(self, now: datetime | None = None) -> dict[str, Any]:
        """The fields `list` shows (JSON-ready)."""
        at = self.dead_lettered_at
        return {
            "id": self.id,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "dead_lettered_at": None if at is None else at.isoformat(),
            "age_seconds": self.age_seconds(now),
            "reason": self.reason,
            "origin_topic": self.origin_topic,
            "origin_partition": self.origin_partition,
            "origin_offset": self.origin_offset,
            "group": self.group,
            "key": self.key_text,
            "payload_bytes": self.payload_bytes,
            "replay_count": self.replay_count,
            "replayed_from": self.replayed_from,
        }

    def replay_headers(self) -> dict[str, bytes]:
        headers = {name: value for name, value in self.headers.items() if name not in _BOOKKEEPING_HEADERS}
        headers[REPLAYED_FROM_HEADER] = self.id.encode()
        headers[REPLAY_COUNT_HEADER] = str(self.replay_count + 1).encode()
        return headers


@dataclass(frozen=True)
class Selection:
    """Which dead letters: all of them, narrowed by origin topic, reason text and time."""

    origin: str | None = None  # the origin topic's name (or its registry key, e.g. tasks-submit)
    reason: str | None = None  # a case-insensitive substring of the reason
    since: datetime | None = None  # dead-lettered at or after (aware)
    limit: int = DEFAULT_LIMIT

    def matches(self, entry: DeadLetter) -> bool:
        if self.origin is not None and entry.origin_topic != self.origin:
            return False
        if self.reason is not None and self.reason.casefold() not in (entry.reason or "").casefold():
            return False
        if self.since is not None:
            at = entry.dead_lettered_at
            if at is None or at < self.since:
                return False
        return True


@dataclass(frozen=True)
class Listing:
    entries: list[DeadLetter]
    truncated: bool  # more matched than the limit (the oldest `limit` are in `entries`)


@dataclass(frozen=True)
class Replayed:
    id: str  # the dead letter's
    topic: str  # where it went
    partition: int
    offset: int


@dataclass(frozen=True)
class ReplayReport:
    replayed: list[Replayed]
    truncated: bool  # a selection matched more than its limit; the oldest were replayed


def format_id(topic: str, partition: int, offset: int) -> str:
    return f"{topic}:{partition}:{offset}"


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """A duration ago ("90s", "30m", "6h", "2d") or an ISO 8601 time (UTC when it has no zone)."""
    text = text.strip()
    duration = _DURATION.match(text)
    if duration:
        seconds = float(duration.group(1)) * _UNITS[duration.group(2)]
        return (now or datetime.now(UTC)) - timedelta(seconds=seconds)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration (30m, 6h, 2d) nor an ISO 8601 time") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


class DeadLetters:
    """Reads the registry's dead-letter topic(s); replays to origin topics with a producer of its own."""

    def __init__(
        self,
        settings: RuntimeSettings,
        registry: Registry | None = None,
        *,
        timeout_seconds: float = 30.0,
        producer: Producer | None = None,
    ) -> None:
        self._settings = settings
        self._registry = registry or default_registry()
        self.topics = (self._registry.name(TopicKey.DEAD_LETTER),)
        self._timeout = timeout_seconds
        self._producer = producer
        self._producer_lock = threading.Lock()  # the admin API replays from several threads

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(self._timeout)

    # -- reading -------------------------------------------------------------------------------

    def parse_id(self, text: str) -> tuple[str, int, int]:
        topic, _, rest = text.strip().partition(":")
        partition, _, offset = rest.partition(":")
        if not (_DIGITS.fullmatch(partition) and _DIGITS.fullmatch(offset)):
            raise InvalidDeadLetterId(f"{text!r} is not <topic>:<partition>:<offset>")
        if topic not in self.topics:  # well formed, but no dead letter can have it
            raise DeadLetterNotFound(
                f"{text!r}: {topic!r} is not a dead-letter topic ({', '.join(self.topics)})"
            )
        return topic, int(partition), int(offset)

    def resolve_origin(self, origin: str) -> str:
        """A topic name as given, or the name of the registry topic whose key it is (tasks-submit)."""
        try:
            return self._registry.name(TopicKey(origin))
        except ValueError:
            return origin

    def select(self, selection: Selection | None = None) -> Listing:
        """The oldest `limit` dead letters matching, in log order (per topic and partition)."""
        selection = selection or Selection()
        if selection.origin is not None:
            selection = Selection(
                self.resolve_origin(selection.origin), selection.reason, selection.since, selection.limit
            )
        entries: list[DeadLetter] = []
        for entry in self._scan():
            if selection.matches(entry):
                if len(entries) == selection.limit:
                    return Listing(entries, truncated=True)
                entries.append(entry)
        return Listing(entries, truncated=False)

    def get(self, dead_letter_id: str) -> DeadLetter:
        topic, partition, offset = self.parse_id(dead_letter_id)
        consumer = self._consumer("show")
        try:
            low, high = self._watermarks(consumer, topic, partition)
            if not low <= offset < high:
                raise DeadLetterNotFound(
                    f"no dead letter {dead_letter_id} (the partition holds {low}..{high - 1})"
                )
            consumer.assign([TopicPartition(topic, partition, offset)])
            for message in read_until(consumer, {(topic, partition): high}, self._timeout):
                if message.offset == offset:
                    return DeadLetter.of(message)
                if message.offset > offset:
                    break  # a gap (a transaction marker or compaction): nothing at that offset
        except (KafkaException, ReadToEndFailed) as exc:
            raise DeadLettersUnavailable(f"reading {topic} failed: {exc}") from exc
        finally:
            consumer.close()
        raise DeadLetterNotFound(f"no dead letter {dead_letter_id}")

    def _scan(self) -> Iterator[DeadLetter]:
        consumer = self._consumer("list")
        try:
            ends: dict[tuple[str, int], int] = {}
            for topic in self.topics:
                ends |= partition_ends(consumer, topic, self._timeout)
            if not ends:
                return
            consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in ends])
            for message in read_until(consumer, ends, self._timeout):
                yield DeadLetter.of(message)
        except (KafkaException, ReadToEndFailed) as exc:
            raise DeadLettersUnavailable(f"reading the dead letters failed: {exc}") from exc
        finally:
            consumer.close()

    def _watermarks(self, consumer: Consumer, topic: str, partition: int) -> tuple[int, int]:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=self._timeout)
        return int(low), int(high)

    def _consumer(self, purpose: str) -> Consumer:
        return Consumer(
            {
                **client_config(self._settings, f"{self._settings.service_name}-deadletters-{purpose}"),
                "group.id": f"unused-{uuid.uuid4().hex}",  # required by the client; never joined
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": True,
            }
        )

    # -- replaying -----------------------------------------------------------------------------

    def replay_ids(self, ids: Sequence[str]) -> ReplayReport:
        """Replay these dead letters, all or none: an unknown id or origin refuses the request."""
        entries: list[DeadLetter] = []
        refused: dict[str, str] = {}
        for dead_letter_id in dict.fromkeys(ids):  # once each, in the order given
            try:
                entries.append(self.get(dead_letter_id))
            except (InvalidDeadLetterId, DeadLetterNotFound) as exc:
                refused[dead_letter_id] = str(exc)
        return self._replay(entries, refused, truncated=False)

    def replay_selection(self, selection: Selection) -> ReplayReport:
        """Replay the oldest `limit` dead letters matching (the origin is required)."""
        if selection.origin is None:
            raise ReplayRefused({"(selection)": "name the origin topic to replay by selection"})
        listing = self.select(selection)
        return self._replay(listing.entries, {}, truncated=listing.truncated)

    def _replay(
        self, entries: Sequence[DeadLetter], refused: dict[str, str], truncated: bool
    ) -> ReplayReport:
        for entry in entries:
            why = self._unreplayable(entry)
            if why is not None:
                refused[entry.id] = why
        if refused:
            raise ReplayRefused(refused)
        return ReplayReport(self._produce(entries), truncated)

    def _unreplayable(self, entry: DeadLetter) -> str | None:
        origin = entry.origin_topic
        if origin is None:
            return f"its origin is unknown (no {ORIGIN_TOPIC_HEADER} header)"
        try:
            spec = self._registry.by_name(origin)
        except KeyError:
            return f"its origin {origin!r} is not a registered topic"
        if spec.key is TopicKey.DEAD_LETTER or spec.retry_delay_seconds is not None:
            return f"its origin {origin!r} is a dead-letter or retry topic, not where work starts"
        return None

    def _produce(self, entries: Sequence[DeadLetter]) -> list[Replayed]:  # noqa: C901 (the delivery-report bookkeeping of one batch)
        if not entries:
            return []
        with self._producer_lock:
            if self._producer is None:
                client_id = f"{self._settings.service_name}-deadletters-replay"
                self._producer = build_producer(self._settings, client_id)
            producer = self._producer
        results: dict[str, Replayed] = {}
        errors: list[str] = []

        def on_delivery(entry: DeadLetter) -> Any:
            def report(error: KafkaError | None, message: Message) -> None:
                if error is not None:
                    errors.append(f"{entry.id}: {error}")
                    return
                results[entry.id] = Replayed(
                    entry.id, message.topic() or "", message.partition() or 0, message.offset() or 0
                )

            return report

        deadline = time.monotonic() + self._timeout
        for entry in entries:
            origin = entry.origin_topic
            assert origin is not None  # _unreplayable checked
            while True:
                try:
                    producer.produce(
                        origin,
                        value=entry.value,
                        key=entry.key,
                        headers=list(entry.replay_headers().items()),
                        on_delivery=on_delivery(entry),
                    )
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    if time.monotonic() > deadline:
                        raise DeadLettersUnavailable("the producer queue stayed full") from None
                    producer.poll(0.1)
        producer.flush(max(0.0, deadline - time.monotonic()))
        while len(results) + len(errors) < len(entries) and time.monotonic() < deadline:
            producer.poll(0.05)
        for replayed in results.values():
            REPLAYED.labels(replayed.topic).inc()
        if errors or len(results) < len(entries):
            done = ", ".join(sorted(results)) or "none"
            raise DeadLettersUnavailable(
                f"{len(entries) - len(results)} of {len(entries)} replays unacknowledged "
                f"({'; '.join(errors[:3]) or 'timed out'}); acknowledged: {done}"
            )
        return [results[entry.id] for entry in entries]


def _int_or_none(text: str | None) -> int | None:
    try:
        return None if text is None else int(text)
    except ValueError:
        return None
