"""Small Kafka helpers for tests and benchmarks: make topics, produce, read a topic to a condition."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from imgpipe.localstack.waiting import wait_until
from imgpipe.runtime.kafka import Received


def unique_topic(prefix: str) -> str:
    return f"test.{prefix}.{uuid.uuid4().hex[:10]}"


def create_topics(bootstrap_servers: str, partitions_by_topic: Mapping[str, int]) -> None:
    """Create topics and wait until every partition has a leader. Producing to a partition the
    broker has not applied yet can reorder the first batches (KAFKA-15591)."""
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    futures = admin.create_topics(
        [
            NewTopic(name, num_partitions=count, replication_factor=1)
            for name, count in partitions_by_topic.items()
        ]
    )
    for future in futures.values():
        future.result(timeout=30)

    def all_led() -> bool:
        topics = admin.list_topics(timeout=10).topics
        return all(
            name in topics
            and len(topics[name].partitions) == count
            and all(p.leader >= 0 for p in topics[name].partitions.values())
            for name, count in partitions_by_topic.items()
        )

    wait_until(all_led, timeout=30, what=f"leaders for {sorted(partitions_by_topic)}")


def produce(
    bootstrap_servers: str,
    topic: str,
    messages: Iterable[tuple[str | bytes | None, bytes | None]],
    headers: Mapping[str, str | bytes] | None = None,
    partition: int | None = None,
) -> None:
    """Produce (key, value) pairs and wait until the broker has acknowledged every one."""
    producer = Producer({"bootstrap.servers": bootstrap_servers, "partitioner": "murmur2_random"})
    # -1 asks librdkafka's partitioner to choose, as when no partition is given.
    target = -1 if partition is None else partition
    for key, value in messages:
        producer.produce(topic, value=value, key=key, headers=list((headers or {}).items()), partition=target)
    remaining = producer.flush(30)
    if remaining:
        raise RuntimeError(f"{remaining} messages to {topic} were not acknowledged")


def read_topic(
    bootstrap_servers: str,
    topic: str,
    until: Callable[[Sequence[Received]], bool],
    timeout: float = 60.0,
) -> list[Received]:
    """Read `topic` from the beginning (all partitions, no group) until `until(messages)` holds."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=30)
        partitions = metadata.topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        seen: list[Received] = []
        deadline = time.monotonic() + timeout
        while not until(seen):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"condition on {topic} not met within {timeout}s; read {len(seen)} messages"
                )
            for message in consumer.consume(num_messages=500, timeout=0.2):
                if message.error() is None:
                    seen.append(Received.of(message))
        return seen
    finally:
        consumer.close()


def values(messages: Iterable[Received]) -> list[bytes | None]:
    return [message.value for message in messages]
