"""The topic registry loader: the real registry loads, and broken files fail naming the file and field."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from imgpipe.contracts.registry import (
    SCHEMAS_DIR_ENV,
    KeyKind,
    RegistryError,
    TopicKey,
    TopicSpec,
    ValueFormat,
    default_registry,
    load_registry,
    message_class,
    schemas_dir,
)
from imgpipe.v1 import task_pb2

pytestmark = pytest.mark.unit


def test_every_key_has_exactly_one_file_and_loads() -> None:
    registry = load_registry()
    files = {path.stem for path in (schemas_dir() / "topics").glob("*.yaml")}

    assert files == {key.value for key in TopicKey}
    assert [spec.key for spec in registry] == list(TopicKey)
    for spec in registry:
        assert registry.topic(spec.key) is spec
        assert registry.name(spec.key) == spec.name
        assert registry.by_name(spec.name) is spec
        assert spec.source == schemas_dir().resolve() / "topics" / f"{spec.key}.yaml"


def test_default_registry_is_loaded_once() -> None:
    assert default_registry() is default_registry()


def test_retry_tiers_are_ordered_by_delay() -> None:
    tiers = default_registry().retry_tiers()

    assert [tier.key for tier in tiers] == [TopicKey.RETRY_10S, TopicKey.RETRY_1M, TopicKey.RETRY_10M]
    assert [tier.retry_delay_seconds for tier in tiers] == [10.0, 60.0, 600.0]
    assert all(tier.value_format is ValueFormat.PASSTHROUGH for tier in tiers)
    assert all(tier.key_kind is KeyKind.ORIGINAL for tier in tiers)


def test_topics_keep_what_the_design_fixes() -> None:
    registry = default_registry()
    submit = registry.topic(TopicKey.SUBMIT)

    assert submit.value_format is ValueFormat.JSON
    assert submit.value_type == "imgpipe.v1.SubmitTaskRequest"
    assert submit.json_schema_path is not None and submit.json_schema_path.is_file()
    assert registry.topic(TopicKey.CALLBACK_POLICIES).config["cleanup.policy"] == "compact"
    assert registry.topic(TopicKey.CALLBACK_POLICIES).key_kind is KeyKind.POLICY_KEY
    assert registry.topic(TopicKey.CALLBACK_REQUESTS).key_kind is KeyKind.CALLBACK_URL
    for key in (TopicKey.DETECT, TopicKey.GENERATE, TopicKey.MATTE):
        assert registry.topic(key).value_type == "imgpipe.v1.TaskEnvelope"
        assert registry.topic(key).key_kind is KeyKind.TASK_ID


# Kafka's default for a topic without max.message.bytes.
BROKER_MAX_MESSAGE_BYTES = 1048588


def max_message_bytes(spec: TopicSpec) -> int:
    return int(spec.config.get("max.message.bytes", BROKER_MAX_MESSAGE_BYTES))


def test_passthrough_topics_take_any_message_the_others_do() -> None:
    """Retry tiers and dead letters receive copies of every other topic's messages, plus headers."""
    specs = list(default_registry())
    largest = max(
        max_message_bytes(spec) for spec in specs if spec.value_format is not ValueFormat.PASSTHROUGH
    )
    for spec in specs:
        if spec.value_format is ValueFormat.PASSTHROUGH:
            assert max_message_bytes(spec) > largest, spec.name


def test_by_name_of_an_unknown_topic_says_so() -> None:
    with pytest.raises(KeyError, match="not a registered topic"):
        default_registry().by_name("no.such.topic.v1")


def test_message_class_resolves_full_names() -> None:
    assert message_class("imgpipe.v1.TaskEnvelope") is task_pb2.TaskEnvelope
    with pytest.raises(LookupError, match=r"imgpipe\.v1\.Nope"):
        message_class("imgpipe.v1.Nope")


def test_schemas_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(SCHEMAS_DIR_ENV, str(tmp_path))
    assert schemas_dir() == tmp_path


@pytest.fixture
def schemas_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "schemas"
    shutil.copytree(schemas_dir(), copy)
    return copy


DELETE = object()  # as a value in edit(): remove the field


def edit(schemas: Path, key: TopicKey, change: dict[str, object]) -> Path:
    """Change fields ("value/format" addresses a nested one) of a registry file; return its path."""
    path = schemas / "topics" / f"{key}.yaml"
    document = yaml.safe_load(path.read_text())
    for dotted, value in change.items():
        *parents, last = dotted.split("/")
        target = document
        for part in parents:
            target = target[part]
        if value is DELETE:
            del target[last]
        else:
            target[last] = value
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.mark.parametrize(
    ("key", "change", "message"),
    [
        (TopicKey.DETECT, {"value/format": "xml"}, r"value\.format: 'xml' is not one of"),
        (TopicKey.DETECT, {"partitions": 0}, r"partitions: 0 is less than the minimum"),
        (
            TopicKey.DETECT,
            {"config/retention.ms": 604800000},
            r"config\.retention\.ms: 604800000 is not of type",
        ),
        (TopicKey.DETECT, {"name": "tasks-detect"}, r"name: 'tasks-detect' does not match"),
        (TopicKey.DETECT, {"consumers": ["detect"]}, r"consumers\.0: 'detect' does not match"),
        (TopicKey.DETECT, {"key": DELETE}, r"\(top level\): 'key' is a required property"),
        (TopicKey.DETECT, {"value/type": "imgpipe.v1.Missing"}, r"value\.type: no protobuf message"),
        (TopicKey.DETECT, {"value/type": None}, r"value\.type: a protobuf topic needs"),
        (
            TopicKey.SUBMIT,
            {"value/json_schema": "../json/gone.json"},
            r"value\.json_schema: .*does not exist",
        ),
        (TopicKey.RETRY_1M, {"value/type": "imgpipe.v1.TaskEnvelope"}, r"value: a passthrough topic has"),
        (TopicKey.DETECT, {"retry_delay_seconds": 5}, r"retry_delay_seconds: only retry tiers"),
        (TopicKey.GENERATE, {"surprise": 1}, r"Additional properties are not allowed"),
    ],
)
def test_invalid_files_name_the_file_and_the_field(
    schemas_copy: Path, key: TopicKey, change: dict[str, object], message: str
) -> None:
    path = edit(schemas_copy, key, change)

    with pytest.raises(RegistryError) as raised:
        load_registry(schemas_copy)

    assert str(raised.value).startswith(f"{path.resolve()}: ")
    assert raised.match(message)


def test_duplicate_names_are_refused(schemas_copy: Path) -> None:
    edit(schemas_copy, TopicKey.GENERATE, {"name": default_registry().name(TopicKey.DETECT)})

    with pytest.raises(
        RegistryError, match=r"tasks-generate\.yaml: name: .* is also the name in .*tasks-detect"
    ):
        load_registry(schemas_copy)


def test_files_and_topic_keys_must_match(schemas_copy: Path) -> None:
    topics = schemas_copy / "topics"
    (topics / "tasks-matte.yaml").rename(topics / "tasks-mate.yaml")

    with pytest.raises(RegistryError) as raised:
        load_registry(schemas_copy)

    assert raised.match(r"tasks-mate\.yaml: no TopicKey member has the value 'tasks-mate'")
    assert raised.match(r"tasks-matte\.yaml: missing; TopicKey has 'tasks-matte'")


def test_invalid_yaml_names_the_file(schemas_copy: Path) -> None:
    path = schemas_copy / "topics" / "deadletter.yaml"
    path.write_text("name: [unclosed\n")

    with pytest.raises(RegistryError, match=r"deadletter\.yaml: not valid YAML"):
        load_registry(schemas_copy)
