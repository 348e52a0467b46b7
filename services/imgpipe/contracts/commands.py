"""`imgpipe topics list` and `imgpipe topics apply`: show the topic registry; make a cluster match it."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from imgpipe.contracts.topics_admin import DEFAULT_TIMEOUT_SECONDS, apply_topics
from imgpipe.runtime.kafka import client_config
from imgpipe.runtime.settings import RuntimeSettings, SettingsError, load_settings

if TYPE_CHECKING:
    from imgpipe.contracts.registry import Registry, TopicSpec

CLIENT_ID = "imgpipe-topics"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `topics` with its `list` and `apply` subcommands."""
    topics = subparsers.add_parser(
        "topics",
        help="the Kafka topic registry (schemas/topics/)",
        description="Show the topic registry, or create and update a cluster's topics to match it.",
    )
    actions = topics.add_subparsers(dest="topics_command", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="print every registered topic")
    listing.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    listing.set_defaults(handler=list_command)

    apply = actions.add_parser(
        "apply",
        help="create missing topics, raise partition counts, set configs (idempotent)",
        description=(
            "Create missing topics, raise partition counts that are lower than the registry's (never "
            "lower them), and set the registry's topic configs. Re-running changes nothing. Kafka client "
            "settings come from IMGPIPE_KAFKA_BOOTSTRAP_SERVERS and IMGPIPE_KAFKA_CLIENT_CONFIG."
        ),
    )
    apply.add_argument("--bootstrap-servers", help="default: $IMGPIPE_KAFKA_BOOTSTRAP_SERVERS")
    apply.add_argument(
        "--replication-factor", type=_positive_int, help="for every topic, instead of the registry's"
    )
    apply.add_argument("--dry-run", action="store_true", help="report what would change; change nothing")
    apply.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_SECONDS,
        help="seconds to wait for each cluster request (default: %(default)s)",
    )
    apply.set_defaults(handler=apply_command)


def list_command(args: argparse.Namespace) -> int:
    registry = _registry()
    if registry is None:
        return 2
    if args.json:
        json.dump([_describe(spec) for spec in registry], sys.stdout, indent=2)
        print()
        return 0
    rows = [("KEY", "NAME", "PARTITIONS", "MESSAGE KEY", "VALUE", "PRODUCERS", "CONSUMERS")]
    rows += [
        (
            spec.key.value,
            spec.name,
            str(spec.partitions),
            spec.key_kind.value,
            spec.value_type or spec.value_format.value,
            ",".join(spec.producers) or "-",
            ",".join(spec.consumers) or "-",
        )
        for spec in registry
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def apply_command(args: argparse.Namespace) -> int:
    registry = _registry()
    if registry is None:
        return 2
    try:
        # The runtime's settings, so managed clusters' SASL/TLS settings apply here as in every service.
        config = client_config(load_settings(RuntimeSettings), CLIENT_ID)
    except SettingsError as exc:
        print(f"topics apply: {exc}", file=sys.stderr)
        return 2
    if args.bootstrap_servers:
        config["bootstrap.servers"] = args.bootstrap_servers
    try:
        report = apply_topics(
            AdminClient(config),
            registry,
            replication_factor=args.replication_factor,
            dry_run=args.dry_run,
            timeout=args.timeout,
        )
    except (KafkaException, TimeoutError) as exc:
        print(
            f"topics apply: {config['bootstrap.servers']}: {exc.args[0] if exc.args else exc!r}",
            file=sys.stderr,
        )
        return 1
    for line in report.lines():
        print(line)
    return 0


def _registry() -> Registry | None:
    # Imported here: every `imgpipe` command registers this one, and loading the registry's modules
    # (jsonschema, protobuf descriptors, yaml: ~0.4 s) would slow the commands that never read it.
    from imgpipe.contracts.registry import RegistryError, default_registry

    try:
        return default_registry()
    except RegistryError as exc:
        print(f"invalid topic registry:\n{exc}", file=sys.stderr)
        return None


def _describe(spec: TopicSpec) -> dict[str, Any]:
    return {
        "key": spec.key.value,
        "name": spec.name,
        "description": spec.description,
        "partitions": spec.partitions,
        "replication_factor": spec.replication_factor,
        "message_key": spec.key_kind.value,
        "value": {
            "format": spec.value_format.value,
            "type": spec.value_type,
            "json_schema": None if spec.json_schema_path is None else str(spec.json_schema_path),
        },
        "config": dict(spec.config),
        "producers": list(spec.producers),
        "consumers": list(spec.consumers),
        "retry_delay_seconds": spec.retry_delay_seconds,
    }


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
