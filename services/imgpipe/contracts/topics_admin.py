"""Make a Kafka cluster's topics match the registry: `imgpipe topics apply`, the Helm topic Job and
the tests all run `apply_topics`.

- A missing topic is created with the registry's partitions, replication factor and configs.
- A topic with fewer partitions than the registry gets more. Never fewer: Kafka cannot remove
  partitions, and a lower count in the registry is reported as a warning.
- Registry configs that differ from the topic's are set with an incremental alter, which touches
  only those keys. Configs the registry does not name are left alone (and reported).
- A replication factor that differs is reported only: changing it needs a partition reassignment.

Running it again changes nothing, so it is safe on every deploy.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewPartitions,
    NewTopic,
    ResourceType,
)

if TYPE_CHECKING:
    from imgpipe.contracts.registry import TopicSpec

DEFAULT_TIMEOUT_SECONDS = 30.0
READY_POLL_SECONDS = 0.1


@dataclass
class ApplyReport:
    """What apply_topics did (or, with dry_run, would do), topic by topic."""

    created: list[str] = field(default_factory=list)
    partitions_raised: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (was, now)
    configs_set: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> {config: new value}
    unchanged: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    dry_run: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.created or self.partitions_raised or self.configs_set)

    def lines(self) -> list[str]:
        """A human-readable summary, one line per action or warning."""
        create, raise_, set_ = (
            ("would create", "would raise", "would set") if self.dry_run else ("created", "raised", "set")
        )
        lines = [f"{create} {name}" for name in self.created]
        for name, (was, now) in self.partitions_raised.items():
            lines.append(f"{raise_} {name} partitions {was} -> {now}")
        for name, configs in self.configs_set.items():
            settings = ", ".join(f"{key}={value}" for key, value in sorted(configs.items()))
            lines.append(f"{set_} {name} {settings}")
        lines += [f"unchanged {name}" for name in self.unchanged]
        lines += [f"warning: {warning}" for warning in self.warnings]
        return lines


def apply_topics(
    admin: AdminClient,
    topics: Iterable[TopicSpec],
    *,
    replication_factor: int | None = None,
    dry_run: bool = False,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
) -> ApplyReport:
    """Create or update `topics` (a Registry, or any specs) on the cluster behind `admin`.

    `replication_factor` overrides every spec's (a production cluster wants 3, the local one 1).
    Raises KafkaException when the cluster refuses a change or cannot be reached within `timeout`.
    """
    specs = list(topics)
    report = ApplyReport(dry_run=dry_run)
    listed = admin.list_topics(timeout=timeout).topics
    missing = [spec for spec in specs if spec.name not in listed]
    # Topics another apply (the Helm Job, a developer) created first are reconciled like existing ones.
    raced = set() if dry_run else _create(admin, missing, replication_factor, timeout)
    report.created = [spec.name for spec in missing if spec.name not in raced]
    present = [spec for spec in specs if spec.name in listed or spec.name in raced]
    # Wait for the new ones too, so that whatever starts after apply finds every topic ready.
    new = [] if dry_run else report.created
    existing = _wait_until_ready(admin, [spec.name for spec in present] + new, timeout)

    _compare_partitions(report, present, existing, replication_factor)
    if report.partitions_raised and not dry_run:
        new_partitions = [NewPartitions(name, now) for name, (_, now) in report.partitions_raised.items()]
        futures = admin.create_partitions(new_partitions, request_timeout=timeout, operation_timeout=timeout)
        _wait(futures, timeout)

    _compare_configs(report, present, _topic_configs(admin, [spec.name for spec in present], timeout))
    if report.configs_set and not dry_run:
        resources = [
            ConfigResource(
                ResourceType.TOPIC,
                name,
                incremental_configs=[
                    ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)
                    for key, value in sorted(configs.items())
                ],
            )
            for name, configs in report.configs_set.items()
        ]
        _wait(admin.incremental_alter_configs(resources, request_timeout=timeout), timeout)
    report.unchanged = [
        spec.name
        for spec in present
        if spec.name not in report.partitions_raised and spec.name not in report.configs_set
    ]
    return report


def _compare_partitions(
    report: ApplyReport,
    present: list[TopicSpec],
    existing: Mapping[str, tuple[int, int]],
    replication_factor: int | None,
) -> None:
    for spec in present:
        partitions, replicas = existing[spec.name]
        if partitions < spec.partitions:
            report.partitions_raised[spec.name] = (partitions, spec.partitions)
        elif partitions > spec.partitions:
            report.warnings.append(
                f"{spec.name} has {partitions} partitions, the registry says {spec.partitions}; "
                "partitions are never removed"
            )
        wanted_replicas = replication_factor or spec.replication_factor
        if replicas != wanted_replicas:
            report.warnings.append(
                f"{spec.name} has replication factor {replicas}, wanted {wanted_replicas}; "
                "change it with a partition reassignment"
            )


def _compare_configs(
    report: ApplyReport, present: list[TopicSpec], current: Mapping[str, Mapping[str, ConfigEntry]]
) -> None:
    for spec in present:
        entries = current[spec.name]
        differing = {
            key: value
            for key, value in spec.config.items()
            if key not in entries or entries[key].value != value
        }
        if differing:
            report.configs_set[spec.name] = differing
        unmanaged = sorted(
            key
            for key, entry in entries.items()
            if key not in spec.config and ConfigSource(entry.source) == ConfigSource.DYNAMIC_TOPIC_CONFIG
        )
        if unmanaged:
            report.warnings.append(
                f"{spec.name} overrides configs the registry does not set: {', '.join(unmanaged)}"
            )


def _wait_until_ready(admin: AdminClient, names: list[str], timeout: float) -> dict[str, tuple[int, int]]:
    """Topic name -> (partition count, replication factor), once every named topic is listed without
    error. Brokers learn of a new topic shortly after the controller; until then it is listed with an
    error such as LEADER_NOT_AVAILABLE, or not at all."""
    deadline = time.monotonic() + timeout
    while True:
        ready: dict[str, tuple[int, int]] = {}
        for name, topic in admin.list_topics(timeout=timeout).topics.items():
            if name in names and topic.error is None:
                replicas = min(
                    (len(partition.replicas) for partition in topic.partitions.values()), default=0
                )
                ready[name] = (len(topic.partitions), replicas)
        waiting = sorted(set(names) - ready.keys())
        if not waiting:
            return ready
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics not ready after {timeout}s: {', '.join(waiting)}")
        time.sleep(READY_POLL_SECONDS)


def _create(
    admin: AdminClient, specs: list[TopicSpec], replication_factor: int | None, timeout: float
) -> set[str]:
    """Create the topics; return the names that turned out to exist already."""
    if not specs:
        return set()
    new_topics = [
        NewTopic(
            spec.name,
            num_partitions=spec.partitions,
            replication_factor=replication_factor or spec.replication_factor,
            config=dict(spec.config),
        )
        for spec in specs
    ]
    raced = set()
    futures = admin.create_topics(new_topics, request_timeout=timeout, operation_timeout=timeout)
    for name, future in futures.items():
        try:
            future.result(timeout=timeout)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
            raced.add(name)
    return raced


def _topic_configs(admin: AdminClient, names: list[str], timeout: float) -> dict[str, dict[str, ConfigEntry]]:
    """Topic name -> config name -> its entry (value and source)."""
    if not names:
        return {}
    resources = [ConfigResource(ResourceType.TOPIC, name) for name in names]
    futures = admin.describe_configs(resources, request_timeout=timeout)
    return {resource.name: future.result(timeout=timeout) for resource, future in futures.items()}


def _wait(futures: Mapping[Any, Future[Any]], timeout: float) -> None:
    for future in futures.values():
        future.result(timeout=timeout)
