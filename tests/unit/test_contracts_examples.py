"""Example payloads (schemas/examples/) match their JSON Schemas and round-trip through protobuf; the
payload codec holds both forms of the submit topic to the same contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from imgpipe.contracts.payloads import (
    PROTOBUF_CONTENT_TYPE,
    PayloadError,
    decode_value,
    encode_value,
    example_json,
    is_protobuf,
    read_example,
    schema_problems,
)
from imgpipe.contracts.registry import TopicKey, TopicSpec, ValueFormat, default_registry, schemas_dir
from imgpipe.ingest.models import SubmitTopicTask
from imgpipe.v1 import submit_pb2, task_pb2

pytestmark = pytest.mark.unit

EXAMPLES = schemas_dir() / "examples"
CALLBACK_EXAMPLES = EXAMPLES / "callbacks"
TOPIC_EXAMPLES = [
    pytest.param(spec, path, id=f"{spec.key}/{path.name}")
    for spec in default_registry()
    for path in spec.examples
]


def test_every_topic_with_a_message_type_has_examples_and_every_example_dir_a_topic() -> None:
    for spec in default_registry():
        if spec.value_format is not ValueFormat.PASSTHROUGH:
            assert spec.examples, f"no examples in {EXAMPLES / spec.key}"
    topic_keys = {key.value for key in TopicKey}
    assert {path.name for path in EXAMPLES.iterdir()} <= topic_keys | {CALLBACK_EXAMPLES.name}


@pytest.mark.parametrize(("spec", "path"), TOPIC_EXAMPLES)
def test_example_matches_its_schema_and_round_trips(spec: TopicSpec, path: Path) -> None:
    document = json.loads(path.read_text())
    if spec.json_schema_path is not None:
        assert schema_problems(spec.json_schema_path, document) == []
    message = read_example(spec, path)

    # JSON -> message -> bytes -> message -> JSON, in every wire form the topic takes.
    forms = [None, PROTOBUF_CONTENT_TYPE] if spec.value_format is ValueFormat.JSON else [None]
    for content_type in forms:
        decoded = decode_value(spec, encode_value(spec, message, content_type), content_type)
        assert decoded == message
        # Examples are written in canonical form (defaults left out), so they come back unchanged.
        assert example_json(spec, decoded) == document


@pytest.mark.parametrize("path", sorted(CALLBACK_EXAMPLES.glob("*.json")), ids=lambda path: path.name)
def test_callback_example_matches_its_schema(path: Path) -> None:
    document = json.loads(path.read_text())
    # A batched callback is a JSON array of single callbacks.
    name = "callback-batch.v1.schema.json" if isinstance(document, list) else "callback.v1.schema.json"

    assert schema_problems(schemas_dir() / "json" / name, document) == []


def test_callback_schema_ties_state_to_type_and_fields() -> None:
    schema = schemas_dir() / "json" / "callback.v1.schema.json"
    succeeded = json.loads((CALLBACK_EXAMPLES / "succeeded.json").read_text())

    assert schema_problems(schema, {**succeeded, "type": "task.failed"})
    assert schema_problems(schema, {key: value for key, value in succeeded.items() if key != "result_url"})
    assert schema_problems(schema, {**succeeded, "completed_at": "yesterday"})


SUBMIT = default_registry().topic(TopicKey.SUBMIT)


T = {"tenant_id": "acme"}
URL = {"image_url": "https://a.example/i.png", **T}


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ({"prompt": "x", **T}, "is not valid under any of the given schemas"),
        (
            {"prompt": "x", "image_url": "https://a.example/i.png", "image_base64": "AAAA", **T},
            "is valid under each of",
        ),
        ({"prompt": "x", "image_url": "file:///etc/passwd", **T}, "does not match"),
        ({"prompt": "", **URL}, "should be non-empty"),
        ({"prompt": "x", "callback_mode": "later", **URL}, "is not one of"),
        ({"prompt": "x", "priority": 1, **URL}, "'priority' was unexpected"),
        ({"prompt": "x", "image_url": "https://a.example/i.png"}, "'tenant_id' is a required property"),
        ({"prompt": "x", **URL, "tenant_id": "t" * 65}, "is too long"),
        ({"prompt": "nul \u0000 here", **URL}, "should not be valid under"),
        ({"prompt": "x", "metadata": {"k": "nul \u0000"}, **URL}, "should not be valid under"),
    ],
)
def test_invalid_submits_are_refused_in_either_form(document: dict[str, object], problem: str) -> None:
    with pytest.raises(PayloadError, match=problem):
        decode_value(SUBMIT, json.dumps(document).encode())


@pytest.mark.parametrize(
    "document",
    [
        {"prompt": "x", "image_url": "https://a.example/i.png"},
        {"prompt": "x", **URL, "tenant_id": "t" * 65},
        {"prompt": "x", **URL, "tenant_id": ""},
        {"prompt": "nul \u0000 here", **URL},
    ],
)
def test_the_consumer_model_refuses_what_the_schema_refuses(document: dict[str, object]) -> None:
    assert schema_problems(SUBMIT.json_schema_path or Path(), document)
    with pytest.raises(ValidationError):
        SubmitTopicTask.model_validate(document)


def test_the_protobuf_submit_form_is_held_to_the_json_schema() -> None:
    no_image = submit_pb2.SubmitTaskRequest(prompt="x", tenant_id="acme").SerializeToString()

    with pytest.raises(PayloadError, match="is not valid under any of the given schemas"):
        decode_value(SUBMIT, no_image, PROTOBUF_CONTENT_TYPE)


def test_submit_forms_decode_to_the_same_message() -> None:
    document = {
        "prompt": "x",
        "image_base64": "iVBORw0=",
        "callback_mode": "batched",
        "metadata": {"k": "v"},
        **T,
    }
    expected = submit_pb2.SubmitTaskRequest(
        tenant_id="acme",
        prompt="x",
        image_base64=b"\x89PNG\r",
        callback_mode=task_pb2.CALLBACK_MODE_BATCHED,
        metadata={"k": "v"},
    )

    assert decode_value(SUBMIT, json.dumps(document).encode(), "application/json; charset=utf-8") == expected
    assert decode_value(SUBMIT, expected.SerializeToString(), "application/x-protobuf") == expected


@pytest.mark.parametrize(
    ("content_type", "protobuf"),
    [
        (None, False),
        ("application/json", False),
        ("application/x-protobuf", True),
        ("Application/Protobuf; proto=imgpipe.v1.SubmitTaskRequest", True),
        ("application/vnd.google.protobuf", True),
    ],
)
def test_content_type_chooses_the_form(content_type: str | None, protobuf: bool) -> None:
    assert is_protobuf(content_type) is protobuf


def test_undecodable_values_are_payload_errors() -> None:
    detect = default_registry().topic(TopicKey.DETECT)

    with pytest.raises(PayloadError, match=r"not a serialized imgpipe\.v1\.TaskEnvelope"):
        decode_value(detect, b"\xff\xff\xff")
    with pytest.raises(PayloadError, match="not JSON"):
        decode_value(SUBMIT, b"\xff")


def test_passthrough_topics_have_no_message_type() -> None:
    with pytest.raises(TypeError, match="passthrough"):
        decode_value(default_registry().topic(TopicKey.DEAD_LETTER), b"")


def test_schema_problems_do_not_echo_whole_images() -> None:
    huge = {"prompt": "x", "image_url": "https://a.example/i.png", "image_base64": "A" * 100_000}

    problems = schema_problems(SUBMIT.json_schema_path or Path(), huge)

    assert problems and all(len(problem) < 300 for problem in problems)
