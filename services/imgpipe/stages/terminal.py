"""Which tasks have already ended: read from the result topic so stages skip canceled or reaped work.

Each stage process tails the whole result topic (no consumer group: every process needs every
result) from `lookback` ago, which covers every task that can still be in flight.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

from confluent_kafka import Consumer, KafkaError, TopicPartition
from google.protobuf.message import DecodeError

from imgpipe.runtime.kafka import client_config
from imgpipe.runtime.settings import RuntimeSettings
from imgpipe.v1 import result_pb2

log = logging.getLogger(__name__)

CATCH_UP_POLL_SECONDS = 0.05


class TerminalTasks:
    def __init__(self, settings: RuntimeSettings, result_topic: str, lookback_seconds: float) -> None:
        self._settings = settings
        self._topic = result_topic
        self._lookback = lookback_seconds
        self._ended: dict[str, float] = {}  # task id -> when we learned it ended
        self._lock = threading.Lock()
        self._caught_up = threading.Event()

    def has_ended(self, task_id: str) -> bool:
        with self._lock:
            return task_id in self._ended

    def is_caught_up(self) -> bool:
        """Readiness: the watcher has read up to the end of the topic once."""
        return self._caught_up.is_set()

    def run(self, stop: threading.Event) -> None:
        consumer = Consumer(
            {
                **client_config(self._settings, f"{self._settings.service_name}-terminal-watch"),
                "group.id": f"unused-{uuid.uuid4().hex}",  # required by the client; never joined
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            }
        )
        try:
            self._assign_from_lookback(consumer)
            at_end: set[int] = set()
            while not stop.is_set():
                # consume() waits out its whole timeout unless 500 messages come: while catching up,
                # a short one lets readiness follow the partitions' ends at once (a 0.5 s timeout
                # made the stage report ready 1-2 s after it had read to the end).
                timeout = 0.5 if self._caught_up.is_set() else CATCH_UP_POLL_SECONDS
                for message in consumer.consume(num_messages=500, timeout=timeout):
                    error = message.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            at_end.add(message.partition() or 0)
                        continue
                    self._remember(message.value() or b"")
                if not self._caught_up.is_set() and len(at_end) >= len(consumer.assignment()):
                    self._caught_up.set()
                self._forget_old()
        except Exception:
            log.exception("terminal-task watcher stopped; stages will process ended tasks until restart")
            self._caught_up.set()  # degrade to doing extra work rather than staying unready
        finally:
            consumer.close()

    def _assign_from_lookback(self, consumer: Consumer) -> None:
        partitions = consumer.list_topics(self._topic, timeout=30).topics[self._topic].partitions
        since_ms = int((time.time() - self._lookback) * 1000)
        wanted = [TopicPartition(self._topic, p, since_ms) for p in partitions]
        consumer.assign(consumer.offsets_for_times(wanted, timeout=30))

    def _remember(self, value: bytes) -> None:
        try:
            task_id = result_pb2.TaskResult.FromString(value).task_id
        except DecodeError:
            return  # the projector dead-letters it; here it simply names no task
        with self._lock:
            self._ended[task_id] = time.monotonic()

    def _forget_old(self) -> None:
        horizon = time.monotonic() - self._lookback
        with self._lock:
            if len(self._ended) > 1000:
                self._ended = {task: at for task, at in self._ended.items() if at > horizon}
