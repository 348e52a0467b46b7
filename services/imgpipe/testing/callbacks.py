"""Callback policies for tests and benchmarks: write them and wait until the callback service runs on them."""

from __future__ import annotations

from collections.abc import Mapping

from confluent_kafka import Consumer, Producer, TopicPartition

from imgpipe.contracts.registry import TopicKey, default_registry
from imgpipe.localstack.pipeline import LocalPipeline
from imgpipe.localstack.waiting import wait_until
from imgpipe.v1 import callback_pb2

POSITION_METRIC = "imgpipe_callback_policy_topic_position"


def set_policies(
    pipeline: LocalPipeline,
    policies: Mapping[str, callback_pb2.CallbackPolicy | None],
    timeout: float = 60,
) -> None:
    """Write policies (None deletes) to the policy topic, then wait until the pipeline's callback
    service has read the topic to its end (its reader's position metric)."""
    bootstrap = pipeline.endpoints.kafka_bootstrap_servers
    topic = default_registry().name(TopicKey.CALLBACK_POLICIES)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for key, policy in policies.items():
        producer.produce(topic, key=key, value=None if policy is None else policy.SerializeToString())
    assert producer.flush(30) == 0, "policies not acknowledged"
    watermarks = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused"})
    try:
        partitions = watermarks.list_topics(topic, timeout=10).topics[topic].partitions
        end = sum(
            watermarks.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[1]
            for partition in partitions
        )
    finally:
        watermarks.close()

    def read_to_end() -> bool:
        return any(s.name == POSITION_METRIC and s.value >= end for s in pipeline.metrics("callback"))

    wait_until(read_to_end, timeout, "the callback service to read the new policies")
