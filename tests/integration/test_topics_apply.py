"""`apply_topics` against the real broker: create, re-run as a no-op, raise partitions, never lower
them, set drifted configs, dry run.

Every test applies copies of the real registry specs under unique names, so the broker accepts the
registry's own configs and tests never touch the topics the services use.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType  # type: ignore[attr-defined]

from imgpipe.contracts.registry import TopicKey, TopicSpec, default_registry
from imgpipe.contracts.topics_admin import apply_topics

pytestmark = pytest.mark.integration


@pytest.fixture
def admin(stack: Any) -> AdminClient:
    return AdminClient({"bootstrap.servers": stack.kafka_bootstrap_servers})


@pytest.fixture
def specs(admin: AdminClient) -> Iterator[list[TopicSpec]]:
    """The registry's topics renamed with a unique prefix; deleted afterwards."""
    prefix = f"test.{uuid.uuid4().hex[:10]}"
    renamed = [dataclasses.replace(spec, name=f"{prefix}.{spec.name}") for spec in default_registry()]
    yield renamed
    for future in admin.delete_topics(names(renamed), operation_timeout=30).values():
        try:
            future.result(timeout=30)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:  # never created (dry run)
                raise


def partitions(admin: AdminClient, name: str) -> int:
    return len(admin.list_topics(topic=name, timeout=30).topics[name].partitions)


def configs(admin: AdminClient, name: str) -> dict[str, str]:
    (future,) = admin.describe_configs([ConfigResource(ResourceType.TOPIC, name)]).values()
    return {key: entry.value for key, entry in future.result(timeout=30).items()}


def names(specs: Sequence[TopicSpec]) -> list[str]:
    return [spec.name for spec in specs]


def test_creates_every_topic_as_registered_and_a_rerun_changes_nothing(
    admin: AdminClient, specs: list[TopicSpec]
) -> None:
    first = apply_topics(admin, specs)

    assert first.created == names(specs)
    assert first.warnings == []
    for spec in specs:
        assert partitions(admin, spec.name) == spec.partitions
        actual = configs(admin, spec.name)
        assert {key: actual[key] for key in spec.config} == dict(spec.config)

    second = apply_topics(admin, specs)

    assert not second.changed
    assert second.unchanged == names(specs)
    assert second.warnings == []


def test_raises_partitions_sets_drifted_configs_and_never_lowers(
    admin: AdminClient, specs: list[TopicSpec]
) -> None:
    detect = next(spec for spec in specs if spec.key is TopicKey.DETECT)
    apply_topics(admin, [detect])

    grown = dataclasses.replace(
        detect, partitions=detect.partitions + 2, config={**detect.config, "retention.ms": "3600000"}
    )
    report = apply_topics(admin, [grown])

    assert report.partitions_raised == {detect.name: (detect.partitions, grown.partitions)}
    assert report.configs_set == {detect.name: {"retention.ms": "3600000"}}
    assert partitions(admin, detect.name) == grown.partitions
    assert configs(admin, detect.name)["retention.ms"] == "3600000"
    assert not apply_topics(admin, [grown]).changed

    shrunk = dataclasses.replace(grown, partitions=1)
    report = apply_topics(admin, [shrunk])

    assert not report.changed
    assert any("never removed" in warning for warning in report.warnings)
    assert partitions(admin, detect.name) == grown.partitions


def test_reports_configs_set_outside_the_registry(admin: AdminClient, specs: list[TopicSpec]) -> None:
    events = next(spec for spec in specs if spec.key is TopicKey.EVENTS)
    apply_topics(admin, [events])
    without_retention = dataclasses.replace(
        events, config={key: value for key, value in events.config.items() if key != "retention.ms"}
    )

    report = apply_topics(admin, [without_retention])

    assert not report.changed
    assert report.warnings == [f"{events.name} overrides configs the registry does not set: retention.ms"]


def test_dry_run_reports_and_changes_nothing(admin: AdminClient, specs: list[TopicSpec]) -> None:
    report = apply_topics(admin, specs, dry_run=True)

    assert report.created == names(specs)
    assert report.lines()[0] == f"would create {specs[0].name}"
    existing = admin.list_topics(timeout=30).topics
    assert not any(spec.name in existing for spec in specs)
