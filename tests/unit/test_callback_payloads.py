"""Callback bodies against schemas/json/callback(-batch).v1.schema.json and the example callbacks."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from imgpipe.callback.payloads import callback_item, encode_request, rfc3339_millis, wants_inline_result
from imgpipe.contracts.payloads import json_schema_validator
from imgpipe.contracts.registry import schemas_dir
from imgpipe.v1 import result_pb2, task_pb2

pytestmark = pytest.mark.unit

SCHEMAS = schemas_dir() / "json"
EXAMPLES = schemas_dir() / "examples" / "callbacks"
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
URL = "https://s3.example.com/imgpipe/tasks/t-1/matte.png?X-Amz-Signature=abc"


def single() -> Draft202012Validator:
    return json_schema_validator(SCHEMAS / "callback.v1.schema.json")


def batch() -> Draft202012Validator:
    return json_schema_validator(SCHEMAS / "callback-batch.v1.schema.json")


def assert_valid(validator: Draft202012Validator, document: Any) -> None:
    problems = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(document)]
    assert problems == []


def make_result(state: task_pb2.TaskState.ValueType = task_pb2.TASK_STATE_SUCCEEDED, **fields: Any) -> Any:
    defaults: dict[str, Any] = {"task_id": "t-1", "tenant_id": "acme", "processing_ms": 1500}
    result = result_pb2.TaskResult(state=state, **{**defaults, **fields})
    result.created_at.FromDatetime(datetime(2026, 11, 22, 8, 30, 0, 125_000, tzinfo=UTC))
    result.completed_at.FromDatetime(datetime(2026, 11, 22, 8, 30, 6, 241_000, tzinfo=UTC))
    return result


def test_succeeded_with_url_only() -> None:
    result = make_result(metadata={"source": "mobile", "order_id": "A-1042"})
    item = callback_item(result, result_url=URL, inline_png=None)
    assert item == {
        "type": "task.succeeded",
        "task_id": "t-1",
        "state": "succeeded",
        "result_url": URL,
        "created_at": "2026-11-22T08:30:00.125Z",
        "completed_at": "2026-11-22T08:30:06.241Z",
        "processing_ms": 1500,
        "metadata": {"order_id": "A-1042", "source": "mobile"},
    }
    assert list(item["metadata"]) == ["order_id", "source"]  # sorted: the same bytes on every encoding
    assert_valid(single(), item)


def test_succeeded_with_inline_png() -> None:
    item = callback_item(make_result(), result_url=URL, inline_png=PNG)
    assert base64.b64decode(item["result_base64"], validate=True) == PNG
    assert "metadata" not in item  # left out when empty, like the examples
    assert_valid(single(), item)


def test_failed_carries_the_error() -> None:
    error = task_pb2.TaskError(
        code=task_pb2.ERROR_CODE_NO_PET_DETECTED,
        message="no cat or dog was found",
        stage=task_pb2.STAGE_DETECT,
    )
    item = callback_item(
        make_result(task_pb2.TASK_STATE_FAILED, error=error), result_url=None, inline_png=None
    )
    assert item["type"] == "task.failed"
    assert item["state"] == "failed"
    assert item["error"] == {
        "code": "no_pet_detected",
        "message": "no cat or dog was found",
        "stage": "detect",
    }
    assert "result_url" not in item
    assert "result_base64" not in item
    assert_valid(single(), item)


def test_canceled_and_failed_without_details_still_match_the_schema() -> None:
    canceled = callback_item(make_result(task_pb2.TASK_STATE_CANCELED), result_url=None, inline_png=None)
    assert canceled["type"] == "task.canceled"
    assert canceled["error"] == {"code": "canceled", "message": "the task was canceled"}
    assert_valid(single(), canceled)

    failed = callback_item(make_result(task_pb2.TASK_STATE_FAILED), result_url=None, inline_png=None)
    assert failed["error"] == {"code": "internal", "message": "the task failed"}
    assert_valid(single(), failed)


@pytest.mark.parametrize(
    "code", [c for c in task_pb2.ErrorCode.values() if c != task_pb2.ERROR_CODE_UNSPECIFIED]
)
def test_every_error_code_and_stage_is_in_the_schema(code: task_pb2.ErrorCode.ValueType) -> None:
    for stage in task_pb2.Stage.values():
        error = task_pb2.TaskError(code=code, message="m", stage=stage)
        item = callback_item(
            make_result(task_pb2.TASK_STATE_FAILED, error=error), result_url=None, inline_png=None
        )
        expected = task_pb2.ErrorCode.Name(code).removeprefix("ERROR_CODE_").lower()
        assert item["error"]["code"] == expected
        assert ("stage" in item["error"]) is (stage != task_pb2.STAGE_UNSPECIFIED)
        assert_valid(single(), item)


@pytest.mark.parametrize(
    "state", [task_pb2.TASK_STATE_UNSPECIFIED, task_pb2.TASK_STATE_QUEUED, task_pb2.TASK_STATE_PROCESSING]
)
def test_non_terminal_states_are_refused(state: task_pb2.TaskState.ValueType) -> None:
    with pytest.raises(ValueError, match="not terminal"):
        callback_item(make_result(state), result_url=URL, inline_png=None)


def test_arguments_that_would_break_the_schema_are_refused() -> None:
    with pytest.raises(ValueError):
        callback_item(make_result(), result_url=None, inline_png=None)
    with pytest.raises(ValueError):
        callback_item(make_result(), result_url="ftp://example.com/x.png", inline_png=None)
    with pytest.raises(ValueError):
        callback_item(make_result(), result_url=URL, inline_png=b"")
    with pytest.raises(ValueError):
        callback_item(make_result(task_pb2.TASK_STATE_FAILED), result_url=URL, inline_png=None)
    with pytest.raises(ValueError):
        callback_item(make_result(task_pb2.TASK_STATE_CANCELED), result_url=None, inline_png=PNG)
    with pytest.raises(ValueError):
        callback_item(
            result_pb2.TaskResult(state=task_pb2.TASK_STATE_CANCELED), result_url=None, inline_png=None
        )


def test_timestamps_are_utc_milliseconds() -> None:
    result = make_result()
    result.created_at.seconds, result.created_at.nanos = 1_795_335_000, 999_999_999  # truncated, not rounded
    result.completed_at.Clear()  # unset: the epoch, still well-formed
    item = callback_item(result, result_url=URL, inline_png=None)
    assert item["created_at"] == "2026-11-22T08:10:00.999Z"
    assert item["completed_at"] == "1970-01-01T00:00:00.000Z"
    assert_valid(single(), item)
    stamp = result_pb2.TaskResult().created_at
    stamp.FromDatetime(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    assert rfc3339_millis(stamp) == "2026-01-02T03:04:05.000Z"


def test_encode_single_and_batch() -> None:
    ok = callback_item(
        make_result(metadata={"note": "chat noir \u00e9\u732b"}), result_url=URL, inline_png=PNG
    )
    failed = callback_item(
        make_result(task_pb2.TASK_STATE_FAILED, task_id="t-2"), result_url=None, inline_png=None
    )

    body = encode_request([ok], batched=False)
    assert body.isascii()
    assert b'","' in body and b'", "' not in body and b'": "' not in body  # compact separators
    assert b"\\u00e9\\u732b" in body  # non-ASCII escaped: the signed bytes read alike everywhere
    assert json.loads(body) == ok
    assert_valid(single(), json.loads(body))
    assert encode_request([ok], batched=False) == body  # deterministic

    batched = encode_request([ok, failed], batched=True)
    assert json.loads(batched) == [ok, failed]
    assert_valid(batch(), json.loads(batched))
    assert json.loads(encode_request([ok], batched=True)) == [ok]  # batched mode: an array even of one

    with pytest.raises(ValueError):
        encode_request([ok, failed], batched=False)
    with pytest.raises(ValueError):
        encode_request([], batched=False)
    with pytest.raises(ValueError):
        encode_request([], batched=True)


def test_wants_inline_result() -> None:
    artifact = task_pb2.Artifact(object_key="tasks/t-1/matte.png", size_bytes=1000)
    asked = task_pb2.CallbackSpec(url="https://hooks.example.com/", include_inline_result=True)
    assert wants_inline_result(make_result(result=artifact, callback=asked), max_bytes=1000)
    assert not wants_inline_result(make_result(result=artifact, callback=asked), max_bytes=999)
    assert not wants_inline_result(make_result(result=artifact, callback=asked), max_bytes=0)
    not_asked = task_pb2.CallbackSpec(url="https://hooks.example.com/")
    assert not wants_inline_result(make_result(result=artifact, callback=not_asked), max_bytes=10**9)
    assert not wants_inline_result(make_result(callback=asked), max_bytes=10**9)  # no artifact
    failed = make_result(task_pb2.TASK_STATE_FAILED, result=artifact, callback=asked)
    assert not wants_inline_result(failed, max_bytes=10**9)


# --- the example callbacks, rebuilt from TaskResults --------------------------------------------


def _result_from_example(document: dict[str, Any]) -> tuple[Any, str | None, bytes | None]:
    result = result_pb2.TaskResult(
        task_id=document["task_id"],
        state=task_pb2.TaskState.Value("TASK_STATE_" + document["state"].upper()),
        processing_ms=document["processing_ms"],
        metadata=document.get("metadata", {}),
    )
    result.created_at.FromJsonString(document["created_at"])
    result.completed_at.FromJsonString(document["completed_at"])
    if "error" in document:
        error = document["error"]
        result.error.code = task_pb2.ErrorCode.Value("ERROR_CODE_" + error["code"].upper())
        result.error.message = error["message"]
        if "stage" in error:
            result.error.stage = task_pb2.Stage.Value("STAGE_" + error["stage"].upper())
    inline = base64.b64decode(document["result_base64"]) if "result_base64" in document else None
    return result, document.get("result_url"), inline


def _same_instants(document: dict[str, Any]) -> dict[str, Any]:
    """Timestamps as instants: the examples sometimes leave out the milliseconds, we always write them."""
    out = dict(document)
    for key in ("created_at", "completed_at"):
        out[key] = datetime.fromisoformat(out[key].replace("Z", "+00:00"))
    return out


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.json")), ids=lambda p: p.name)
def test_examples_are_reproduced(path: Path) -> None:
    document = json.loads(path.read_text())
    documents = document if isinstance(document, list) else [document]
    items = []
    for expected in documents:
        result, url, inline = _result_from_example(expected)
        item = callback_item(result, result_url=url, inline_png=inline)
        assert _same_instants(item) == _same_instants(expected)
        assert list(item) == list(expected)  # the same field order as the documented examples
        items.append(item)
    body = json.loads(encode_request(items, batched=isinstance(document, list)))
    assert_valid(batch() if isinstance(document, list) else single(), body)
