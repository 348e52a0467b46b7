"""Topic values as bytes and as messages, the way the registry declares each topic's value.

- protobuf topics: the serialized `value_type`.
- json topics (what outsiders send): JSON per the topic's JSON Schema, or the serialized `value_type`
  when the `content-type` header says protobuf. Both decode to the same protobuf message.

The JSON form outsiders use ("external JSON") is the protobuf JSON mapping with the .proto field
names and enum values written lower-case without their prefix (CALLBACK_MODE_BATCHED -> "batched"),
so one protobuf message describes both forms and no field mapping is written by hand.

Example payloads (schemas/examples/<topic key>/*.json) are in the protobuf JSON mapping for
protobuf topics and in external JSON for json topics; `read_example` reads either.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message
from jsonschema import Draft202012Validator
from referencing import Registry as SchemaRegistry
from referencing import Resource

from imgpipe.contracts.registry import TopicSpec, ValueFormat, message_class
from imgpipe.v1 import task_pb2

CONTENT_TYPE_HEADER = "content-type"
JSON_CONTENT_TYPE = "application/json"
PROTOBUF_CONTENT_TYPE = "application/x-protobuf"
# Other names producers use for the same thing; all decode alike.
PROTOBUF_CONTENT_TYPES = frozenset(
    {PROTOBUF_CONTENT_TYPE, "application/protobuf", "application/vnd.google.protobuf"}
)
JSON_SCHEMA_SUFFIX = ".schema.json"

MessageT = TypeVar("MessageT", bound=Message)


class PayloadError(ValueError):
    """A value does not match its topic's contract (undecodable, schema violation, unknown field)."""


def is_protobuf(content_type: str | None) -> bool:
    """Whether a content-type header value names protobuf (parameters ignored); absent means JSON."""
    if content_type is None:
        return False
    return content_type.split(";", 1)[0].strip().lower() in PROTOBUF_CONTENT_TYPES


def decode_value(spec: TopicSpec, value: bytes, content_type: str | None = None) -> Message:
    """The message a topic value holds. Raises PayloadError when it breaks the contract."""
    cls = _value_class(spec)
    if spec.value_format is ValueFormat.PROTOBUF or is_protobuf(content_type):
        message = cls()
        try:
            message.ParseFromString(value)
        except DecodeError as exc:
            raise PayloadError(f"{spec.name}: not a serialized {spec.value_type}: {exc}") from None
        if spec.value_format is ValueFormat.JSON:
            # The JSON Schema is the contract of both forms, so the protobuf form is held to it too.
            _validate(spec, to_external_json(message))
        return message
    try:
        document = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError(f"{spec.name}: not JSON: {exc}") from None
    return _from_checked_json(spec, document, cls)


def encode_value(spec: TopicSpec, message: Message, content_type: str | None = None) -> bytes:
    """The bytes a producer writes for `message`; for a json topic JSON unless content_type is protobuf."""
    _value_class(spec)
    if spec.value_format is ValueFormat.PROTOBUF or is_protobuf(content_type):
        # Deterministic so equal messages (maps included) give equal bytes.
        return message.SerializeToString(deterministic=True)
    document = to_external_json(message)
    _validate(spec, document)
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def read_example(spec: TopicSpec, path: Path) -> Message:
    """An example payload file of `spec` as a message (validated against the JSON Schema if any)."""
    cls = _value_class(spec)
    document = json.loads(path.read_text())
    if spec.value_format is ValueFormat.JSON:
        return _from_checked_json(spec, document, cls)
    try:
        return json_format.ParseDict(document, cls())
    except json_format.ParseError as exc:
        raise PayloadError(f"{path}: {exc}") from None


def example_json(spec: TopicSpec, message: Message) -> Any:
    """`message` as an example file of `spec` spells it (the inverse of read_example)."""
    _value_class(spec)
    if spec.value_format is ValueFormat.JSON:
        return to_external_json(message)
    return json_format.MessageToDict(message)


def from_external_json(document: Any, cls: type[MessageT]) -> MessageT:
    """Parse external JSON (see the module doc) into a message of `cls`."""
    try:
        converted = _convert_message(document, _descriptor(cls), to_proto=True)
        return json_format.ParseDict(converted, cls())
    except json_format.ParseError as exc:
        raise PayloadError(str(exc)) from None


def to_external_json(message: Message) -> dict[str, Any]:
    """`message` as external JSON: .proto field names, short lower-case enum values, defaults left out."""
    document = json_format.MessageToDict(message, preserving_proto_field_name=True)
    converted: dict[str, Any] = _convert_message(document, _descriptor(type(message)), to_proto=False)
    return converted


@functools.cache
def json_schema_validator(path: Path) -> Draft202012Validator:
    """A validator for one JSON Schema file; `$ref`s to the `$id` of sibling schemas resolve."""
    resources = []
    for sibling in sorted(path.parent.glob(f"*{JSON_SCHEMA_SUFFIX}")):
        contents = json.loads(sibling.read_text())
        resources.append((contents["$id"], Resource.from_contents(contents)))
    return Draft202012Validator(
        json.loads(path.read_text()),
        registry=SchemaRegistry().with_resources(resources),
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )


def schema_problems(path: Path, document: Any) -> list[str]:
    """Every way `document` breaks the JSON Schema at `path`, as "<json path>: <message>" lines."""
    errors = json_schema_validator(path).iter_errors(document)
    return sorted(f"{error.json_path}: {_shorten(error.message)}" for error in errors)


def _shorten(text: str, limit: int = 200) -> str:
    # jsonschema quotes the offending value, which may be a whole base64 image; these end up in logs.
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _value_class(spec: TopicSpec) -> type[Message]:
    if spec.value_type is None:
        raise TypeError(f"{spec.name} is a {spec.value_format} topic: its values have no message type")
    return message_class(spec.value_type)


def _validate(spec: TopicSpec, document: Any) -> None:
    if spec.json_schema_path is None:
        return
    problems = schema_problems(spec.json_schema_path, document)
    if problems:
        schema = spec.json_schema_path.name
        raise PayloadError(f"{spec.name}: does not match {schema}: " + "; ".join(problems))


def _from_checked_json(spec: TopicSpec, document: Any, cls: type[MessageT]) -> MessageT:
    _validate(spec, document)
    try:
        return from_external_json(document, cls)
    except PayloadError as exc:
        raise PayloadError(f"{spec.name}: {exc}") from None


def _descriptor(cls: type[Message]) -> Descriptor:
    # The C (upb) descriptor the stubs also allow has the same interface as the Python one.
    return cast(Descriptor, cls.DESCRIPTOR)


@functools.cache
def _external_enum_names(enum: EnumDescriptor) -> Mapping[str, str]:
    """External name -> .proto value name, e.g. "batched" -> "CALLBACK_MODE_BATCHED". The zero value
    (*_UNSPECIFIED) has no external name: external JSON leaves the field out instead."""
    prefix = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", enum.name).upper() + "_"
    return {value.name.removeprefix(prefix).lower(): value.name for value in enum.values if value.number != 0}


def _convert_message(document: Any, descriptor: Descriptor, *, to_proto: bool) -> Any:
    # Unknown names and wrong types pass through unchanged for ParseDict (or the schema) to report.
    if not isinstance(document, dict):
        return document
    converted = {}
    for name, value in document.items():
        field = descriptor.fields_by_name.get(name)
        converted[name] = value if field is None else _convert_field(field, value, to_proto=to_proto)
    return converted


def _convert_field(field: FieldDescriptor, value: Any, *, to_proto: bool) -> Any:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        value_field = field.message_type.fields_by_name["value"]
        if isinstance(value, dict):
            return {key: _convert_single(value_field, item, to_proto=to_proto) for key, item in value.items()}
        return value
    if field.is_repeated and isinstance(value, list):
        return [_convert_single(field, item, to_proto=to_proto) for item in value]
    return _convert_single(field, value, to_proto=to_proto)


def _convert_single(field: FieldDescriptor, value: Any, *, to_proto: bool) -> Any:
    if field.enum_type is not None and isinstance(value, str):
        names = _external_enum_names(field.enum_type)
        if to_proto:
            return names.get(value, value)
        return next((short for short, full in names.items() if full == value), value)
    if field.message_type is not None:
        return _convert_message(value, field.message_type, to_proto=to_proto)
    return value


def stage_name(stage: task_pb2.Stage.ValueType) -> str:
    """A Stage enum value's name as artifact maps and the API use it: STAGE_DETECT is "detect"."""
    return task_pb2.Stage.Name(stage).removeprefix("STAGE_").lower()
