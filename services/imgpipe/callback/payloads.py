"""Callback bodies, exactly per schemas/json/callback.v1.schema.json (one task) and
callback-batch.v1.schema.json (a batch: a JSON array of those).

`callback_item` turns one `TaskResult` into one callback object; `encode_request` turns the items of
one request into the bytes that are signed and sent (send those same bytes on every retry).

Inlining the result is the caller's decision, not this module's: pass `inline_png` only when the
task asked for it (`result.callback.include_inline_result`) and the PNG is within the service's
size cap (`callback_inline_max_bytes`); `wants_inline_result` tells, from the artifact's recorded
size, whether it is worth fetching. Otherwise pass None and the callback carries only `result_url`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from google.protobuf.timestamp_pb2 import Timestamp

from imgpipe.contracts.payloads import stage_name
from imgpipe.v1 import result_pb2, task_pb2

_STATES: Final = {
    task_pb2.TASK_STATE_SUCCEEDED: "succeeded",
    task_pb2.TASK_STATE_FAILED: "failed",
    task_pb2.TASK_STATE_CANCELED: "canceled",
}
# What a failed or canceled result without an error code reports (the schema requires a known code).
_DEFAULT_ERRORS: Final = {
    task_pb2.TASK_STATE_FAILED: (task_pb2.ERROR_CODE_INTERNAL, "the task failed"),
    task_pb2.TASK_STATE_CANCELED: (task_pb2.ERROR_CODE_CANCELED, "the task was canceled"),
}
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def callback_item(
    result: result_pb2.TaskResult, *, result_url: str | None, inline_png: bytes | None
) -> dict[str, Any]:
    """One task's callback object.

    Succeeded: `result_url` (the presigned URL, http or https) is required, and `inline_png` adds
    `result_base64`. Failed or canceled: both must be None, and `error` {code, message, stage} comes
    from `result.error` (stage left out when unspecified). Raises ValueError for a non-terminal state
    or arguments that would break the schema."""
    state = _STATES.get(result.state)
    if state is None:
        raise ValueError(f"task {result.task_id}: {task_pb2.TaskState.Name(result.state)} is not terminal")
    if not result.task_id:
        raise ValueError("the result has no task_id")
    item: dict[str, Any] = {"type": f"task.{state}", "task_id": result.task_id, "state": state}
    if result.state == task_pb2.TASK_STATE_SUCCEEDED:
        if result_url is None or not result_url.startswith(("http://", "https://")):
            raise ValueError(f"task {result.task_id}: a succeeded callback needs an http(s) result_url")
        item["result_url"] = result_url
        if inline_png is not None:
            if not inline_png:
                raise ValueError(f"task {result.task_id}: inline_png is empty")
            item["result_base64"] = base64.b64encode(inline_png).decode("ascii")
    else:
        if result_url is not None or inline_png is not None:
            raise ValueError(f"task {result.task_id}: a {state} callback carries no result")
        item["error"] = _error(result)
    item["created_at"] = rfc3339_millis(result.created_at)
    item["completed_at"] = rfc3339_millis(result.completed_at)
    item["processing_ms"] = int(result.processing_ms)
    if result.metadata:
        item["metadata"] = dict(sorted(result.metadata.items()))
    return item


def encode_request(items: Sequence[dict[str, Any]], *, batched: bool) -> bytes:
    """The request body: the one item as an object when not batched, a JSON array when batched (even
    of one). Compact, ASCII-only JSON, so the signed bytes are the same in every receiver's language."""
    if batched:
        if not items:
            raise ValueError("a batched callback carries at least one item")
        document: Any = list(items)
    else:
        if len(items) != 1:
            raise ValueError(f"an immediate callback carries exactly one item, got {len(items)}")
        document = items[0]
    return json.dumps(document, separators=(",", ":"), allow_nan=False).encode("ascii")


def wants_inline_result(result: result_pb2.TaskResult, *, max_bytes: int) -> bool:
    """Whether the result PNG should be fetched for inlining: the task succeeded, asked for it, and the
    artifact's recorded size is within `max_bytes`. Check the fetched bytes' length against the cap
    again before passing them as `inline_png`."""
    return (
        result.state == task_pb2.TASK_STATE_SUCCEEDED
        and result.HasField("callback")
        and result.callback.include_inline_result
        and result.HasField("result")
        and 0 < result.result.size_bytes <= max_bytes
    )


def rfc3339_millis(timestamp: Timestamp) -> str:
    """RFC 3339 UTC with milliseconds (truncated) and "Z": 2026-11-22T08:30:00.125Z."""
    moment = _EPOCH + timedelta(seconds=timestamp.seconds, microseconds=timestamp.nanos // 1000)
    return moment.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def error_code_name(code: task_pb2.ErrorCode.ValueType) -> str:
    """ERROR_CODE_NO_PET_DETECTED -> "no_pet_detected"."""
    return task_pb2.ErrorCode.Name(code).removeprefix("ERROR_CODE_").lower()


def _error(result: result_pb2.TaskResult) -> dict[str, str]:
    default_code, default_message = _DEFAULT_ERRORS[result.state]
    code = result.error.code or default_code
    error = {"code": error_code_name(code), "message": result.error.message or default_message}
    if result.error.stage != task_pb2.STAGE_UNSPECIFIED:
        error["stage"] = stage_name(result.error.stage)
    return error
