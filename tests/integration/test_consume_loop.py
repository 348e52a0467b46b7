"""The shared consume loop against the real broker: dead letters, retry tiers, signals, kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from imgpipe.localstack.waiting import wait_until
from imgpipe.runtime.brake import DeadLetterBrakeTripped
from imgpipe.runtime.consumer import ConsumeLoop, FailureRouting, RetryTier
from imgpipe.runtime.errors import PoisonMessage, TransientError
from imgpipe.runtime.kafka import (
    DEAD_LETTER_GROUP_HEADER,
    DEAD_LETTER_REASON_HEADER,
    ORIGIN_OFFSET_HEADER,
    ORIGIN_PARTITION_HEADER,
    ORIGIN_TOPIC_HEADER,
    Forward,
    Received,
    Record,
    build_producer,
)
from imgpipe.runtime.settings import RuntimeSettings
from imgpipe.runtime.telemetry import configure_tracing
from imgpipe.testing.kafka import create_topics, produce, read_topic, unique_topic, values

pytestmark = pytest.mark.integration

WORKER = Path(__file__).with_name("forwarding_worker.py")


@dataclass(frozen=True)
class Topics:
    source: str
    out: str
    tier_a: str
    tier_b: str
    dead_letter: str
    group: str

    def routing(self, delay_seconds: float) -> FailureRouting:
        return FailureRouting(
            retry_tiers=(RetryTier(self.tier_a, delay_seconds), RetryTier(self.tier_b, delay_seconds)),
            dead_letter_topic=self.dead_letter,
        )


@pytest.fixture
def topics(stack: Any) -> Topics:
    names = Topics(*(unique_topic(part) for part in ("in", "out", "tier-a", "tier-b", "dlq", "group")))
    create_topics(
        stack.kafka_bootstrap_servers,
        {names.source: 2, names.out: 1, names.tier_a: 1, names.tier_b: 1, names.dead_letter: 1},
    )
    return names


@pytest.fixture
def run_loop(stack: Any, topics: Topics) -> Iterator[Callable[..., ConsumeLoop]]:
    """Start a ConsumeLoop in a thread; stopped and joined at the end of the test."""
    started: list[tuple[ConsumeLoop, threading.Thread]] = []

    def start(
        handler: Callable[[Record], list[Forward]],
        retry_delay_seconds: float = 1.0,
        max_in_flight: int = 1,
        client_config: dict[str, str] | None = None,
    ) -> ConsumeLoop:
        settings = RuntimeSettings(
            kafka_bootstrap_servers=stack.kafka_bootstrap_servers,
            consumer_poll_seconds=0.1,
            kafka_client_config=client_config or {},
        )
        loop = ConsumeLoop(
            settings=settings,
            group_id=topics.group,
            topics=[topics.source],
            handler=handler,
            producer=build_producer(settings, "test"),
            routing=topics.routing(retry_delay_seconds),
            max_in_flight=max_in_flight,
        )
        thread = threading.Thread(target=loop.run, daemon=True)
        thread.start()
        started.append((loop, thread))
        return loop

    yield start
    for loop, thread in started:
        loop.stop()
        thread.join(timeout=30)
        assert not thread.is_alive(), "consume loop did not stop"


def test_poison_message_is_dead_lettered_and_the_partition_keeps_flowing(
    stack: Any, topics: Topics, run_loop: Callable[..., ConsumeLoop]
) -> None:
    def handler(record: Record) -> list[Forward]:
        if record.value == b"poison":
            raise PoisonMessage("cannot decode")
        return [Forward(topics.out, record.value, key=record.key)]

    batch = [b"ok-0", b"poison", b"ok-1", b"ok-2", b"ok-3"]
    produce(stack.kafka_bootstrap_servers, topics.source, [(b"same-key", v) for v in batch], partition=0)
    run_loop(handler)

    forwarded = read_topic(stack.kafka_bootstrap_servers, topics.out, lambda seen: len(seen) >= 4)
    assert values(forwarded) == [b"ok-0", b"ok-1", b"ok-2", b"ok-3"]
    (dead,) = read_topic(stack.kafka_bootstrap_servers, topics.dead_letter, lambda seen: len(seen) >= 1)
    assert dead.value == b"poison"
    assert "cannot decode" in (dead.header(DEAD_LETTER_REASON_HEADER) or "")
    assert dead.header(ORIGIN_TOPIC_HEADER) == topics.source
    assert dead.header(ORIGIN_PARTITION_HEADER) == "0"
    assert dead.header(ORIGIN_OFFSET_HEADER) == "1"
    assert dead.header(DEAD_LETTER_GROUP_HEADER) == topics.group


def test_transient_failure_is_retried_through_a_tier_without_blocking_the_partition(
    stack: Any, topics: Topics, run_loop: Callable[..., ConsumeLoop]
) -> None:
    def handler(record: Record) -> list[Forward]:
        if record.value == b"flaky" and record.attempt == 1:
            raise TransientError("object store unavailable")
        return [Forward(topics.out, record.value, key=record.key, headers={"attempt": str(record.attempt)})]

    batch = [b"flaky", b"next-1", b"next-2"]
    produce(stack.kafka_bootstrap_servers, topics.source, [(b"k", v) for v in batch], partition=0)
    run_loop(handler, retry_delay_seconds=2.0)

    forwarded = read_topic(stack.kafka_bootstrap_servers, topics.out, lambda seen: len(seen) >= 3)
    # The messages behind the failed one went through first; the retry came back on attempt 2.
    assert values(forwarded) == [b"next-1", b"next-2", b"flaky"]
    assert forwarded[-1].header("attempt") == "2"


def test_a_message_failing_every_tier_is_dead_lettered_with_the_last_error(
    stack: Any, topics: Topics, run_loop: Callable[..., ConsumeLoop]
) -> None:
    def handler(record: Record) -> list[Forward]:
        if record.value == b"always-fails":
            raise TransientError(f"still down on attempt {record.attempt}")
        return [Forward(topics.out, record.value)]

    produce(
        stack.kafka_bootstrap_servers, topics.source, [(b"k", b"always-fails"), (b"k", b"fine")], partition=0
    )
    run_loop(handler, retry_delay_seconds=0.2)

    (dead,) = read_topic(stack.kafka_bootstrap_servers, topics.dead_letter, lambda seen: len(seen) >= 1)
    reason = dead.header(DEAD_LETTER_REASON_HEADER) or ""
    assert reason.startswith("retries exhausted after 3 attempts")
    assert "still down on attempt 3" in reason
    assert dead.header(ORIGIN_TOPIC_HEADER) == topics.source
    assert values(read_topic(stack.kafka_bootstrap_servers, topics.out, lambda seen: len(seen) >= 1)) == [
        b"fine"
    ]


def test_forwards_continue_the_incoming_trace(
    stack: Any, topics: Topics, run_loop: Callable[..., ConsumeLoop]
) -> None:
    configure_tracing("test")
    trace_id, parent_span_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    traceparent = f"00-{trace_id}-{parent_span_id}-01"
    produce(
        stack.kafka_bootstrap_servers,
        topics.source,
        [(b"k", b"traced")],
        headers={"traceparent": traceparent},
    )
    run_loop(lambda record: [Forward(topics.out, record.value)])

    (forwarded,) = read_topic(stack.kafka_bootstrap_servers, topics.out, lambda seen: len(seen) >= 1)
    _, forwarded_trace_id, forwarded_span_id, _ = (forwarded.header("traceparent") or "").split("-")
    assert forwarded_trace_id == trace_id  # one task, one trace
    assert forwarded_span_id != parent_span_id  # the child is this service's processing span


# -- a real worker process: SIGTERM and kill -9 ----------------------------------------------


def _start_worker(
    stack: Any, topics: Topics, markers: Path, max_in_flight: int = 1
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "IMGPIPE_KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap_servers,
        "IMGPIPE_HEALTH_PORT": "0",
        "IMGPIPE_CONSUMER_POLL_SECONDS": "0.1",
        "IMGPIPE_CONSUMER_BATCH_SIZE": "5",
        # A killed member's partitions move after the session timeout; keep the wait short.
        "IMGPIPE_KAFKA_CLIENT_CONFIG": '{"session.timeout.ms": "6000", "heartbeat.interval.ms": "1000"}',
        "WORKER_IN_TOPIC": topics.source,
        "WORKER_OUT_TOPIC": topics.out,
        "WORKER_TIER_TOPIC": topics.tier_a,
        "WORKER_DEAD_LETTER_TOPIC": topics.dead_letter,
        "WORKER_GROUP": topics.group,
        "WORKER_MARKER_DIR": str(markers),
        "WORKER_MAX_IN_FLIGHT": str(max_in_flight),
    }
    return subprocess.Popen([sys.executable, str(WORKER)], env=env)


def _messages_with_one_blocker() -> list[tuple[bytes, bytes]]:
    # All on one key, so one partition and a fixed order: the blocker sits mid-batch.
    return (
        [(b"k", f"m-{i}".encode()) for i in range(5)]
        + [(b"k", b"block-1")]
        + [(b"k", f"m-{i}".encode()) for i in range(5, 20)]
    )


def test_sigterm_during_handling_finishes_the_message_and_loses_nothing(
    stack: Any, topics: Topics, tmp_path: Path
) -> None:
    sent = _messages_with_one_blocker()
    produce(stack.kafka_bootstrap_servers, topics.source, sent)
    first = _start_worker(stack, topics, tmp_path)
    wait_until(lambda: (tmp_path / "started-block-1").exists(), timeout=60, what="handler to start block-1")

    first.send_signal(signal.SIGTERM)
    (tmp_path / "release").touch()
    assert first.wait(timeout=60) == 0

    forwarded_by_first = read_topic(
        stack.kafka_bootstrap_servers, topics.out, lambda seen: b"block-1" in values(seen)
    )
    second = _start_worker(stack, topics, tmp_path)
    try:
        everything = read_topic(
            stack.kafka_bootstrap_servers, topics.out, lambda seen: len(set(values(seen))) >= 21
        )
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=60) == 0
    assert sorted(set(values(everything))) == sorted(value for _, value in sent)
    # A graceful stop stored the offsets of everything the first worker forwarded: no replays.
    assert len(values(everything)) == len(sent)
    assert b"block-1" in values(forwarded_by_first)


def test_kill_9_during_handling_loses_nothing(stack: Any, topics: Topics, tmp_path: Path) -> None:
    sent = _messages_with_one_blocker()
    produce(stack.kafka_bootstrap_servers, topics.source, sent)
    first = _start_worker(stack, topics, tmp_path)
    wait_until(lambda: (tmp_path / "started-block-1").exists(), timeout=60, what="handler to start block-1")

    first.kill()
    first.wait(timeout=30)
    (tmp_path / "release").touch()
    second = _start_worker(stack, topics, tmp_path)
    try:
        everything = read_topic(
            stack.kafka_bootstrap_servers, topics.out, lambda seen: len(set(values(seen))) >= 21
        )
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=60) == 0
    # At least once: every message arrived; replays of the killed batch are allowed.
    assert sorted(set(values(everything))) == sorted(value for _, value in sent)


# -- many messages in flight -----------------------------------------------------------------


def _sorted_values(messages: list[Received]) -> list[bytes]:
    return sorted(value or b"" for value in values(messages))


def _committed(stack: Any, topics: Topics, partition: int = 0) -> TopicPartition:
    """The group's committed offset (and its metadata) for one source partition, asked as an outsider."""
    reader = Consumer({"bootstrap.servers": stack.kafka_bootstrap_servers, "group.id": topics.group})
    try:
        (committed,) = reader.committed([TopicPartition(topics.source, partition)], timeout=10)
        return committed
    finally:
        reader.close()


def test_every_slot_taken_pauses_the_partitions_past_the_poll_interval_then_resumes_them(
    stack: Any, topics: Topics, run_loop: Callable[..., ConsumeLoop]
) -> None:
    release = threading.Event()
    handled: list[bytes | None] = []

    def handler(record: Record) -> list[Forward]:
        handled.append(record.value)
        if (record.value or b"").startswith(b"block"):
            release.wait(timeout=60)
        return [Forward(topics.out, record.value, key=record.key)]

    sent = [b"block-a", b"block-b", b"m-1", b"m-2", b"m-3"]
    produce(stack.kafka_bootstrap_servers, topics.source, [(b"k", v) for v in sent], partition=0)
    # A member that stops polling is thrown out after max.poll.interval.ms; the calls outlast it.
    poll_interval_ms = 7000
    loop = run_loop(
        handler,
        max_in_flight=2,
        client_config={
            "session.timeout.ms": "6000",
            "heartbeat.interval.ms": "1000",
            "max.poll.interval.ms": str(poll_interval_ms),
        },
    )

    wait_until(
        lambda: (topics.source, 0) in loop.paused_for_backpressure(), timeout=60, what="backpressure pause"
    )
    assert handled == [b"block-a", b"block-b"]  # nothing taken past the two slots
    release.wait(timeout=poll_interval_ms / 1000 + 1)  # the long calls outlast the poll interval
    assert (topics.source, 0) in loop.paused_for_backpressure()
    release.set()

    wait_until(lambda: not loop.paused_for_backpressure(), timeout=30, what="partitions resumed")
    forwarded = read_topic(stack.kafka_bootstrap_servers, topics.out, lambda seen: len(seen) >= len(sent))
    assert _sorted_values(forwarded) == sorted(sent)
    assert sorted(v for v in handled if v) == sorted(sent)  # each once: the member was never replaced


def test_eight_in_flight_the_third_finishing_last_holds_the_commit_and_kill_9_reruns_only_it(
    stack: Any, topics: Topics, tmp_path: Path
) -> None:
    sent = [(b"k", v) for v in (b"m-0", b"m-1", b"block-2", b"m-3", b"m-4", b"m-5", b"m-6", b"m-7")]
    produce(stack.kafka_bootstrap_servers, topics.source, sent, partition=0)
    first = _start_worker(stack, topics, tmp_path, max_in_flight=8)
    try:
        forwarded = read_topic(stack.kafka_bootstrap_servers, topics.out, lambda seen: len(seen) >= 7)
        assert _sorted_values(forwarded) == sorted(v for _, v in sent if v != b"block-2")
        # Stored only up to the unfinished third message; the five finished after it named beside it.
        committed = wait_until(
            lambda: [c for c in [_committed(stack, topics)] if c.offset == 2 and c.metadata],
            timeout=30,
            what="offset 2 committed",
        )
        assert committed[0].metadata == "imgpipe-done:3-7"
        assert (tmp_path / "started-block-2").exists()
    finally:
        first.kill()
        first.wait(timeout=30)

    (tmp_path / "release").touch()
    second = _start_worker(stack, topics, tmp_path, max_in_flight=8)
    try:
        wait_until(lambda: _committed(stack, topics).offset == 8, timeout=60, what="offset 8 committed")
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=60) == 0
    everything = read_topic(stack.kafka_bootstrap_servers, topics.out, lambda seen: len(seen) >= 8)
    # The restart ran exactly the unfinished message: each value forwarded once, block-2 last.
    assert _sorted_values(everything) == sorted(v for _, v in sent)
    assert values(everything)[-1] == b"block-2"


def test_sigterm_with_every_slot_taken_drains_them_all_and_loses_nothing(
    stack: Any, topics: Topics, tmp_path: Path
) -> None:
    blockers = [f"block-{i}".encode() for i in range(4)]
    sent = [(b"k", v) for v in blockers + [f"m-{i}".encode() for i in range(4, 8)]]
    produce(stack.kafka_bootstrap_servers, topics.source, sent, partition=0)
    first = _start_worker(stack, topics, tmp_path, max_in_flight=4)
    wait_until(
        lambda: all((tmp_path / f"started-{b.decode()}").exists() for b in blockers),
        timeout=60,
        what="all four slots taken",
    )

    first.send_signal(signal.SIGTERM)
    (tmp_path / "release").touch()
    assert first.wait(timeout=60) == 0
    # The four in flight were finished and committed; the four never started were left for later.
    assert _committed(stack, topics).offset == 4

    second = _start_worker(stack, topics, tmp_path, max_in_flight=4)
    try:
        wait_until(lambda: _committed(stack, topics).offset == 8, timeout=60, what="offset 8 committed")
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=60) == 0
    everything = read_topic(stack.kafka_bootstrap_servers, topics.out, lambda seen: len(seen) >= 8)
    assert _sorted_values(everything) == sorted(v for _, v in sent)  # each exactly once


@pytest.mark.parametrize("max_in_flight", [1, 4])
def test_the_dead_letter_brake_stops_a_consumer_that_rejects_everything(
    stack: Any, topics: Topics, max_in_flight: int
) -> None:
    def reject_everything(record: Record) -> list[Forward]:  # a bad deploy
        raise PoisonMessage("cannot decode")

    produce(stack.kafka_bootstrap_servers, topics.source, [(b"k", b"%d" % n) for n in range(40)], partition=0)
    settings = RuntimeSettings(
        kafka_bootstrap_servers=stack.kafka_bootstrap_servers,
        consumer_poll_seconds=0.1,
        dead_letter_max_consecutive=5,
    )
    loop = ConsumeLoop(
        settings=settings,
        group_id=topics.group,
        topics=[topics.source],
        handler=reject_everything,
        producer=build_producer(settings, "test"),
        routing=topics.routing(1.0),
        max_in_flight=max_in_flight,
    )
    with pytest.raises(DeadLetterBrakeTripped, match="5 messages in a row were dead-lettered"):
        loop.run()  # returns only by the brake (or the test's timeout)

    dead = read_topic(stack.kafka_bootstrap_servers, topics.dead_letter, lambda seen: len(seen) >= 5)
    assert 5 <= len(dead) <= 5 + max_in_flight  # what was in hand when it tripped, not the topic
    # Only dead-lettered messages count as done: the rest waits on its topic for the fix.
    assert _committed(stack, topics).offset <= len(dead) < 40
