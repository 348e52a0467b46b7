"""The local stack serves real Kafka, Postgres and S3 (MinIO) to the clients the services use."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import sqlalchemy as sa
from confluent_kafka import Consumer, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from imgpipe.localstack.endpoints import Endpoints
from imgpipe.localstack.stack import stack_status, start_stack
from imgpipe.localstack.waiting import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def topic(stack: Endpoints) -> Iterator[str]:
    """A fresh one-partition topic, deleted afterwards (the broker does not auto-create topics)."""
    name = f"test.localstack.{uuid.uuid4().hex}"
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap_servers})
    admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])[name].result(timeout=30)
    yield name
    admin.delete_topics([name])[name].result(timeout=30)


def _next_message(consumer: Consumer) -> Message | None:
    message = consumer.poll(0.5)
    if message is not None and message.error():
        raise KafkaException(message.error())
    return message


def test_kafka_delivers_a_produced_message_to_a_consumer(stack: Endpoints, topic: str) -> None:
    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap_servers, "enable.idempotence": True})
    producer.produce(topic, key=b"task-1", value=b"hello", headers={"probe": b"1"})
    assert producer.flush(30) == 0

    consumer = Consumer(
        {
            "bootstrap.servers": stack.kafka_bootstrap_servers,
            "group.id": f"test-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.subscribe([topic])
        message = wait_until(lambda: _next_message(consumer), 60, f"a message on {topic}")
        consumer.commit(message, asynchronous=False)
    finally:
        consumer.close()
    assert (message.key(), message.value(), message.headers()) == (b"task-1", b"hello", [("probe", b"1")])


def test_kafka_broker_runs_with_the_single_node_settings(stack: Endpoints) -> None:
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap_servers})
    resource = ConfigResource(ResourceType.BROKER, "1")
    configs = admin.describe_configs([resource])[resource].result(timeout=30)
    assert configs["auto.create.topics.enable"].value == "false"
    assert configs["offsets.topic.replication.factor"].value == "1"


def test_postgres_stores_and_returns_a_row_through_sqlalchemy(stack: Endpoints) -> None:
    engine = sa.create_engine(stack.database_url)
    table = sa.Table(
        f"localstack_probe_{uuid.uuid4().hex[:12]}",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("note", sa.Text, nullable=False),
    )
    try:
        table.create(engine)
        with engine.begin() as connection:
            connection.execute(table.insert().values(id=1, note="written"))
        with engine.connect() as connection:
            assert (
                connection.execute(sa.select(table.c.note).where(table.c.id == 1)).scalar_one() == "written"
            )
            assert connection.execute(sa.text("SHOW server_version")).scalar_one().startswith("15.")
    finally:
        table.drop(engine, checkfirst=True)
        engine.dispose()


def test_s3_stores_and_returns_an_object_through_boto3(stack: Endpoints) -> None:
    s3 = boto3.client(
        "s3",
        endpoint_url=stack.s3_endpoint_url,
        aws_access_key_id=stack.s3_access_key_id,
        aws_secret_access_key=stack.s3_secret_access_key,
        region_name=stack.s3_region,
    )
    key = f"tasks/{uuid.uuid4().hex}/probe.bin"
    body = bytes(range(256)) * 64
    s3.put_object(Bucket=stack.s3_bucket, Key=key, Body=body, ContentType="application/octet-stream")
    try:
        assert s3.get_object(Bucket=stack.s3_bucket, Key=key)["Body"].read() == body
    finally:
        s3.delete_object(Bucket=stack.s3_bucket, Key=key)


def test_starting_a_running_stack_changes_nothing(stack: Endpoints, stack_name: str) -> None:
    before = stack_status(stack_name)
    assert start_stack(stack_name) == stack
    assert stack_status(stack_name) == before


def test_doctor_reports_every_dependency_healthy(stack: Endpoints, stack_name: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "imgpipe.cli", "doctor", "--name", stack_name],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [["ok", "kafka"], ["ok", "postgres"], ["ok", "s3"]]


def test_doctor_and_stack_status_speak_json_for_scripts(stack: Endpoints, stack_name: str) -> None:
    def run(*command: str) -> tuple[int, dict[str, Any]]:
        argv = [sys.executable, "-m", "imgpipe.cli", *command, "--name", stack_name, "--json"]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        return result.returncode, json.loads(result.stdout)

    code, doctor = run("doctor")
    assert (code, doctor["healthy"]) == (0, True)
    assert [check["dependency"] for check in doctor["checks"]] == ["kafka", "postgres", "s3"]
    code, status = run("stack", "status")
    assert (code, status["running"]) == (0, True)
    assert {c["component"]: c["state"] for c in status["components"]} == {
        "kafka": "running",
        "postgres": "running",
        "minio": "running",
    }


def test_endpoints_carry_every_service_variable(stack: Endpoints) -> None:
    env = stack.as_env()
    assert set(env) == {f"IMGPIPE_{field.name.upper()}" for field in dataclasses.fields(Endpoints)}
    assert env["IMGPIPE_DATABASE_URL"].startswith("postgresql+psycopg://imgpipe:")
