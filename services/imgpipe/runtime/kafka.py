"""Kafka client configuration and the message types the consume loop passes to handlers."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from imgpipe.runtime.settings import RuntimeSettings

# Headers the runtime owns. Values are UTF-8 text.
ATTEMPT_HEADER = "imgpipe-attempt"  # delivery attempt of this message to its group, 1-based
RETRY_GROUP_HEADER = "imgpipe-retry-group"  # the consumer group a retry-tier copy is meant for
RETRY_DUE_HEADER = "imgpipe-retry-due-ms"  # epoch milliseconds before which a retry must not run
ORIGIN_TOPIC_HEADER = "imgpipe-origin-topic"
ORIGIN_PARTITION_HEADER = "imgpipe-origin-partition"
ORIGIN_OFFSET_HEADER = "imgpipe-origin-offset"
ERROR_HEADER = "imgpipe-error"  # why the last attempt failed
DEAD_LETTER_REASON_HEADER = "imgpipe-dead-letter-reason"
DEAD_LETTER_GROUP_HEADER = "imgpipe-dead-letter-group"
# Set on a dead letter put back on its origin topic (runtime/deadletters.py): which dead letter it
# was ("<topic>:<partition>:<offset>") and how often this message has been replayed.
REPLAYED_FROM_HEADER = "imgpipe-replayed-from"
REPLAY_COUNT_HEADER = "imgpipe-replay-count"

HeaderValue = str | bytes


@dataclass(frozen=True)
class Received:
    """A consumed message, read once from confluent-kafka's accessors (all set when error() is None)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Mapping[str, bytes]
    timestamp_ms: int

    @classmethod
    def of(cls, message: Message) -> Received:
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        assert topic is not None and partition is not None and offset is not None, "error message"
        key = message.key()
        return cls(
            topic=topic,
            partition=partition,
            offset=offset,
            key=key.encode() if isinstance(key, str) else key,
            value=message.value(),
            headers=headers_to_dict(message.headers()),
            timestamp_ms=message.timestamp()[1],
        )

    def header(self, name: str) -> str | None:
        raw = self.headers.get(name)
        return None if raw is None else raw.decode("utf-8", errors="replace")

    @property
    def key_text(self) -> str | None:
        return None if self.key is None else self.key.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class Record(Received):
    """One message as a handler sees it. A retried copy is presented as the original: its first
    topic, partition and offset, with `attempt` counting the tries so far."""

    attempt: int = 1


@dataclass(frozen=True)
class Forward:
    """A message a handler asks the runtime to produce before the input's offset is stored."""

    topic: str
    value: bytes | None
    key: str | bytes | None = None
    headers: Mapping[str, HeaderValue] = field(default_factory=dict)


RawHeaders = list[tuple[str, str | bytes | None]] | dict[str, str | bytes | None] | None


def headers_to_dict(headers: RawHeaders) -> dict[str, bytes]:
    """Kafka headers as a dict of bytes; the last value wins for repeated names (ours are unique)."""
    items = headers.items() if isinstance(headers, dict) else headers or []
    return {name: value.encode() if isinstance(value, str) else value or b"" for name, value in items}


def client_config(settings: RuntimeSettings, client_id: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "client.id": client_id,
        **settings.kafka_client_config,
    }


def build_producer(settings: RuntimeSettings, client_id: str) -> Producer:
    """An idempotent producer partitioning keys like the Java client (murmur2), so that keyed data
    lands on the same partition whichever client wrote it; faust (aiokafka) reads it co-partitioned."""
    return Producer(
        {
            **client_config(settings, client_id),
            "enable.idempotence": True,
            "acks": "all",
            "partitioner": "murmur2_random",
            "linger.ms": 5,
            "compression.type": "lz4",
            # Inline images make submit messages (and their retry and dead-letter copies) large;
            # the topics' own max.message.bytes (schemas/topics) is the real limit.
            "message.max.bytes": 16 * 1024 * 1024,
        }
    )


def build_consumer(
    settings: RuntimeSettings, group_id: str, client_id: str, stats_cb: Callable[[str], None] | None = None
) -> Consumer:
    """A consumer whose offsets are stored only by the consume loop, after the work is done."""
    config: dict[str, Any] = {
        **client_config(settings, client_id),
        "group.id": group_id,
        "enable.auto.commit": True,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
    }
    if stats_cb is not None:
        config |= {"statistics.interval.ms": 15_000, "stats_cb": stats_cb}
    return Consumer(config)


class ReadToEndFailed(Exception):
    """A topic could not be read to its end: it is missing, or its end was not reached in time."""


def partition_ends(consumer: Consumer, topic: str, timeout: float) -> dict[tuple[str, int], int]:
    """Where each non-empty partition of `topic` ends now (its high watermark), by (topic, partition)."""
    metadata = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
    if metadata is None or metadata.error is not None:
        raise ReadToEndFailed(f"topic {topic} is not available: {metadata and metadata.error}")
    ends: dict[tuple[str, int], int] = {}
    for partition in sorted(metadata.partitions):
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout)
        if high > low:
            ends[(topic, partition)] = int(high)
    return ends


def read_until(consumer: Consumer, ends: Mapping[tuple[str, int], int], timeout: float) -> Iterator[Received]:
    """The assigned partitions' messages until each reached its end in `ends` (a read of what was there
    when it began: later writes are not waited for). The consumer needs `enable.partition.eof`."""
    ends = dict(ends)
    deadline = time.monotonic() + timeout
    while ends:
        if time.monotonic() > deadline:
            topics = ", ".join(sorted({topic for topic, _ in ends}))
            raise ReadToEndFailed(f"reading {topics} did not reach the end within {timeout:g} s")
        for message in consumer.consume(num_messages=500, timeout=0.2):
            where = (message.topic() or "", message.partition() or 0)
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    ends.pop(where, None)
                elif error.fatal():
                    raise KafkaException(error)
                continue  # transient: the client retries on its own
            end = ends.get(where)
            if end is None:
                continue  # that partition is done
            received = Received.of(message)
            if received.offset + 1 >= end:
                ends.pop(where)
            if received.offset < end:
                yield received


def now_ms() -> int:
    return int(time.time() * 1000)
