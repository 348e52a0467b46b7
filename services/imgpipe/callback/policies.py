"""Every worker's copy of the callback policies: the compacted policy topic, read whole.

This is what a faust GlobalTable over the topic would be; faust 0.15's assignor hangs when a global
table uses an existing single-partition topic as its changelog (see docs/decisions/0002), so a
plain reader thread keeps the copy. Like a global table, it reads from the beginning, applies
tombstones as deletes, and stays subscribed, so a policy change takes effect within a poll.
"""

from __future__ import annotations

import logging
import threading
import uuid

from confluent_kafka import Consumer, KafkaError, TopicPartition
from prometheus_client import Gauge

from imgpipe.runtime.kafka import client_config
from imgpipe.runtime.settings import RuntimeSettings

log = logging.getLogger(__name__)

POSITION = Gauge(
    "imgpipe_callback_policy_topic_position",
    "Offsets of the policy topic read so far, summed over its partitions (compare with its end offsets "
    "to see whether a policy change has reached this worker)",
)


class PolicyBook:
    def __init__(self, settings: RuntimeSettings, topic: str) -> None:
        self._settings = settings
        self._topic = topic
        self._policies: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._caught_up = threading.Event()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            return self._policies.get(key)

    def is_caught_up(self) -> bool:
        """Readiness: every policy written before start-up has been read."""
        return self._caught_up.is_set()

    def run(self, stop: threading.Event) -> None:
        """Read the topic until `stop`; a failed reader starts over (the copy is rebuilt from the
        beginning, which is what a compacted topic is for) rather than serving stale policies."""
        while not stop.is_set():
            try:
                self._read(stop)
            except Exception:
                log.exception("policy reader failed; reading the policy topic again in 1 s")
                stop.wait(1.0)

    def _read(self, stop: threading.Event) -> None:
        consumer = Consumer(
            {
                **client_config(self._settings, f"{self._settings.service_name}-policies"),
                "group.id": f"unused-{uuid.uuid4().hex}",  # required by the client; never joined
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
            }
        )
        try:
            partitions = self._partitions(consumer, stop)
            consumer.assign([TopicPartition(self._topic, p, 0) for p in partitions])
            at_end: set[int] = set()
            positions = dict.fromkeys(partitions, 0)
            while not stop.is_set():
                for message in consumer.consume(num_messages=500, timeout=0.2):
                    error = message.error()
                    partition = message.partition() or 0
                    if error is not None:
                        if error.code() != KafkaError._PARTITION_EOF:
                            raise RuntimeError(f"reading {self._topic}: {error}")
                        at_end.add(partition)
                        continue
                    self._apply(message.key(), message.value())
                    positions[partition] = (message.offset() or 0) + 1
                POSITION.set(sum(positions.values()))
                if len(at_end) >= len(partitions):
                    self._caught_up.set()
        finally:
            consumer.close()

    def _partitions(self, consumer: Consumer, stop: threading.Event) -> list[int]:
        """The topic's partitions, once it exists (readiness stays false until then)."""
        while not stop.is_set():
            topic = consumer.list_topics(self._topic, timeout=30).topics.get(self._topic)
            if topic is not None and topic.error is None and topic.partitions:
                return list(topic.partitions)
            log.warning("policy topic %s not found yet: %s", self._topic, topic and topic.error)
            stop.wait(1.0)
        return []

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        with self._lock:
            if value is None:
                self._policies.pop(key.decode(), None)
            else:
                self._policies[key.decode()] = value
