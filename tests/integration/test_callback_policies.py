"""The callback service's copy of the policy topic (PolicyBook) against the real broker."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from imgpipe.callback.policies import PolicyBook
from imgpipe.callback.settings import CallbackSettings
from imgpipe.localstack.endpoints import Endpoints
from imgpipe.localstack.waiting import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def topic() -> str:
    return f"test.policies.{uuid.uuid4().hex[:8]}"


@pytest.fixture
def book(stack: Endpoints, topic: str) -> Iterator[PolicyBook]:
    settings = CallbackSettings(kafka_bootstrap_servers=stack.kafka_bootstrap_servers)
    policies = PolicyBook(settings, topic)
    stop = threading.Event()
    reader = threading.Thread(target=policies.run, args=(stop,), daemon=True)
    reader.start()
    yield policies
    stop.set()
    reader.join(timeout=30)


def test_a_topic_created_after_start_is_waited_for_then_read_and_followed(
    stack: Endpoints, topic: str, book: PolicyBook, caplog: pytest.LogCaptureFixture
) -> None:
    wait_until(lambda: "not found yet" in caplog.text, 30, "the reader to look for the topic")
    assert not book.is_caught_up(), "no policies read yet: readiness must stay false"

    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap_servers})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap_servers})
    producer.produce(topic, key=b"example.com", value=b"first")
    producer.flush(30)

    wait_until(lambda: book.get("example.com") == b"first", 60, "the policy written after start")
    wait_until(book.is_caught_up, 30, "readiness once the topic was read to its end")

    producer.produce(topic, key=b"example.com", value=None)  # a tombstone deletes
    producer.flush(30)
    wait_until(lambda: book.get("example.com") is None, 30, "the policy deleted")
