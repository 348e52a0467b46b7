"""The topic registry: one YAML file per Kafka topic in schemas/topics/, the only place topic names,
partition counts, keys, value types and topic configs are written down.

Code asks for topics by `TopicKey`, never by name:

    registry = default_registry()
    registry.name(TopicKey.DETECT)                  # the detect topic's name, from tasks-detect.yaml
    registry.topic(TopicKey.DETECT).value_type      # "imgpipe.v1.TaskEnvelope"; see message_class()

Loading validates every file against schemas/topic.schema.json, then checks what a schema cannot:
the file set matches `TopicKey`, names are unique, value types exist in the generated code and JSON
Schemas exist. Errors name the file and the field.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import pkgutil
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message
from jsonschema import Draft202012Validator

SCHEMAS_DIR_ENV = "IMGPIPE_SCHEMAS_DIR"
TOPICS_SUBDIR = "topics"
EXAMPLES_SUBDIR = "examples"
TOPIC_FILE_SCHEMA = "topic.schema.json"
GENERATED_PACKAGE = "imgpipe.v1"


class TopicKey(StrEnum):
    """One member per file in schemas/topics/ (the value is the file's stem)."""

    SUBMIT = "tasks-submit"
    DETECT = "tasks-detect"
    GENERATE = "tasks-generate"
    MATTE = "tasks-matte"
    RESULT = "tasks-result"
    EVENTS = "tasks-events"
    CALLBACK_REQUESTS = "callback-requests"
    CALLBACK_POLICIES = "callback-policies"
    RETRY_10S = "retry-10s"
    RETRY_1M = "retry-1m"
    RETRY_10M = "retry-10m"
    DEAD_LETTER = "deadletter"


class KeyKind(StrEnum):
    """What a topic's message key holds."""

    TASK_ID = "task_id"
    CALLBACK_URL = "callback_url"
    POLICY_KEY = "policy_key"
    ORIGINAL = "original"  # the key of the message copied here (retry tiers, dead letters)
    # Whatever the producer partitions by (a customer id, say); never read, so never an idempotency key.
    PRODUCER_DEFINED = "producer_defined"


class ValueFormat(StrEnum):
    PROTOBUF = "protobuf"
    # JSON per the topic's schema, or the serialized `value_type` when the content-type header says so.
    JSON = "json"
    PASSTHROUGH = "passthrough"  # another topic's message bytes, unchanged


class RegistryError(ValueError):
    """The registry files are invalid; the message names the file and the field."""


@dataclass(frozen=True)
class TopicSpec:
    key: TopicKey
    name: str
    description: str
    partitions: int
    replication_factor: int
    key_kind: KeyKind
    value_format: ValueFormat
    value_type: str | None  # full protobuf message name
    json_schema_path: Path | None  # absolute
    config: Mapping[str, str] = field(hash=False)
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    retry_delay_seconds: float | None
    examples: tuple[Path, ...]  # schemas/examples/<key>/*.json, sorted
    source: Path  # the YAML file this came from


class Registry:
    """All topics, in `TopicKey` order."""

    def __init__(self, specs: Iterable[TopicSpec], schemas_dir: Path) -> None:
        self.schemas_dir = schemas_dir
        self._by_key = {spec.key: spec for spec in specs}
        self._by_name = {spec.name: spec for spec in self._by_key.values()}

    def topic(self, key: TopicKey) -> TopicSpec:
        return self._by_key[key]

    def name(self, key: TopicKey) -> str:
        return self._by_key[key].name

    def by_name(self, name: str) -> TopicSpec:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"{name!r} is not a registered topic") from None

    def retry_tiers(self) -> list[TopicSpec]:
        """The retry tier topics, shortest delay first."""
        tiers = [spec for spec in self if spec.retry_delay_seconds is not None]
        return sorted(tiers, key=lambda spec: spec.retry_delay_seconds or 0.0)

    def __iter__(self) -> Iterator[TopicSpec]:
        return (self._by_key[key] for key in TopicKey if key in self._by_key)

    def __len__(self) -> int:
        return len(self._by_key)


def schemas_dir() -> Path:
    """$IMGPIPE_SCHEMAS_DIR, else the copy a wheel carries (imgpipe/_schemas), else the
    repository's schemas/ (three levels above this package, for an editable install)."""
    configured = os.environ.get(SCHEMAS_DIR_ENV)
    if configured:
        return Path(configured)
    packaged = Path(__file__).resolve().parents[1] / "_schemas"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[3] / "schemas"


@functools.cache
def default_registry() -> Registry:
    """The registry from `schemas_dir()`, loaded once per process."""
    return load_registry()


# load_registry's parameter shadows schemas_dir(); it reaches the default through this name.
_default_schemas_dir = schemas_dir


def load_registry(schemas_dir: Path | None = None) -> Registry:
    """Load and validate every schemas/topics/*.yaml; raise RegistryError naming the file and field."""
    root = (schemas_dir if schemas_dir is not None else _default_schemas_dir()).resolve()
    topics_dir = root / TOPICS_SUBDIR
    if not topics_dir.is_dir():
        raise RegistryError(f"{topics_dir}: no topic registry directory")
    files = {path.stem: path for path in sorted(topics_dir.glob("*.yaml"))}
    known = {key.value for key in TopicKey}
    problems = [f"{files[stem]}: no TopicKey member has the value {stem!r}" for stem in files.keys() - known]
    problems += [f"{topics_dir / stem}.yaml: missing; TopicKey has {stem!r}" for stem in known - files.keys()]
    if problems:
        raise RegistryError("\n".join(sorted(problems)))

    validator = Draft202012Validator(json.loads((root / TOPIC_FILE_SCHEMA).read_text()))
    specs = [_load_topic(TopicKey(stem), path, root, validator) for stem, path in files.items()]

    seen: dict[str, Path] = {}
    for spec in specs:
        if spec.name in seen:
            raise RegistryError(f"{spec.source}: name: {spec.name!r} is also the name in {seen[spec.name]}")
        seen[spec.name] = spec.source
    return Registry(specs, root)


def _load_topic(key: TopicKey, path: Path, root: Path, validator: Draft202012Validator) -> TopicSpec:  # noqa: C901 (one check per field of a topic file)
    def fail(where: str, problem: str) -> RegistryError:
        return RegistryError(f"{path}: {where}: {problem}")

    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise RegistryError(f"{path}: not valid YAML: {exc}") from None
    errors = sorted(validator.iter_errors(document), key=lambda error: list(error.absolute_path))
    if errors:
        first = errors[0]
        where = ".".join(str(part) for part in first.absolute_path) or "(top level)"
        raise fail(where, first.message)
    assert isinstance(document, dict)  # the schema says "object"

    value: dict[str, Any] = document["value"]
    value_format = ValueFormat(value["format"])
    value_type: str | None = value["type"]
    schema_ref: str | None = value["json_schema"]
    delay: float | None = document.get("retry_delay_seconds")

    if value_format is ValueFormat.PASSTHROUGH:
        if value_type is not None or schema_ref is not None:
            raise fail("value", "a passthrough topic has neither type nor json_schema")
    elif value_type is None:
        raise fail("value.type", f"a {value_format} topic needs its protobuf message type")
    if value_format is ValueFormat.JSON and schema_ref is None:
        raise fail("value.json_schema", "a json topic needs its JSON Schema")
    if value_format is ValueFormat.PROTOBUF and schema_ref is not None:
        raise fail("value.json_schema", "a protobuf topic's schema is its type; set null")
    if value_type is not None:
        try:
            message_class(value_type)
        except LookupError as exc:
            raise fail("value.type", str(exc)) from None
    json_schema_path = None
    if schema_ref is not None:
        json_schema_path = (path.parent / schema_ref).resolve()
        if not json_schema_path.is_file():
            raise fail("value.json_schema", f"{json_schema_path} does not exist")
    if delay is not None and value_format is not ValueFormat.PASSTHROUGH:
        raise fail("retry_delay_seconds", "only retry tiers (passthrough topics) have a delay")

    examples_dir = root / EXAMPLES_SUBDIR / key.value
    return TopicSpec(
        key=key,
        name=document["name"],
        description=" ".join(document["description"].split()),
        partitions=document["partitions"],
        replication_factor=document.get("replication_factor", 1),
        key_kind=KeyKind(document["key"]),
        value_format=value_format,
        value_type=value_type,
        json_schema_path=json_schema_path,
        config=MappingProxyType(dict(document["config"])),
        producers=tuple(document["producers"]),
        consumers=tuple(document["consumers"]),
        retry_delay_seconds=None if delay is None else float(delay),
        examples=tuple(sorted(examples_dir.glob("*.json"))),
        source=path,
    )


@functools.cache
def _import_generated_modules() -> None:
    """Import every generated module once, so that the default descriptor pool knows all messages."""
    package = importlib.import_module(GENERATED_PACKAGE)
    for module in pkgutil.iter_modules(package.__path__):
        if module.name.endswith("_pb2"):
            importlib.import_module(f"{GENERATED_PACKAGE}.{module.name}")


def message_class(value_type: str) -> type[Message]:
    """The generated class of a protobuf message, by full name (e.g. "imgpipe.v1.TaskEnvelope")."""
    _import_generated_modules()
    try:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(value_type)
    except KeyError:
        raise LookupError(f"no protobuf message {value_type!r} in {GENERATED_PACKAGE}") from None
    return message_factory.GetMessageClass(descriptor)
