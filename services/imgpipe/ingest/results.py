"""A task row as the TaskResult that announced (or announces) its end."""

from __future__ import annotations

from imgpipe.store.models import Task, TaskState
from imgpipe.v1 import result_pb2, task_pb2

_STATES = {
    TaskState.SUCCEEDED: task_pb2.TASK_STATE_SUCCEEDED,
    TaskState.FAILED: task_pb2.TASK_STATE_FAILED,
    TaskState.CANCELED: task_pb2.TASK_STATE_CANCELED,
}


def error_code_value(name: str) -> task_pb2.ErrorCode.ValueType:
    """ "timeout" -> ERROR_CODE_TIMEOUT; a name the contract does not know is ERROR_CODE_INTERNAL."""
    try:
        return task_pb2.ErrorCode.Value(f"ERROR_CODE_{name.upper()}")
    except ValueError:
        return task_pb2.ERROR_CODE_INTERNAL


def stage_value(name: str) -> task_pb2.Stage.ValueType:
    try:
        return task_pb2.Stage.Value(f"STAGE_{name.upper()}")
    except ValueError:
        return task_pb2.STAGE_UNSPECIFIED


def result_columns(artifact: task_pb2.Artifact) -> dict[str, str | int | None]:
    """The task row's result columns for a stored result (an unset field is NULL)."""
    return {
        "result_object_key": artifact.object_key,
        "result_content_type": artifact.content_type or None,
        "result_width": artifact.width or None,
        "result_height": artifact.height or None,
        "result_size_bytes": artifact.size_bytes or None,
        "result_sha256": artifact.sha256 or None,
    }


def task_result(task: Task) -> result_pb2.TaskResult:
    """The TaskResult of a terminal task, rebuilt from its row: state, result artifact (succeeded) or
    error (failed, canceled), timestamps, processing time, callback spec, tenant and metadata."""
    state = _STATES.get(task.state)
    if state is None:
        raise ValueError(f"task {task.id} has not ended ({task.state.value})")
    result = result_pb2.TaskResult(
        task_id=str(task.id),
        tenant_id=task.tenant_id,
        state=state,
        processing_ms=task.processing_ms or 0,
        metadata=dict(task.metadata_ or {}),
    )
    if task.state is TaskState.SUCCEEDED and task.result_object_key:
        result.result.CopyFrom(
            task_pb2.Artifact(
                object_key=task.result_object_key,
                content_type=task.result_content_type or "",
                width=task.result_width or 0,
                height=task.result_height or 0,
                size_bytes=task.result_size_bytes or 0,
                sha256=task.result_sha256 or "",
            )
        )
    if task.error_code:
        result.error.CopyFrom(
            task_pb2.TaskError(
                code=error_code_value(task.error_code),
                message=task.error_message or "",
                stage=stage_value(task.error_stage) if task.error_stage else task_pb2.STAGE_UNSPECIFIED,
            )
        )
    result.created_at.FromDatetime(task.created_at)
    if task.started_at is not None:
        result.started_at.FromDatetime(task.started_at)
    if task.completed_at is not None:
        result.completed_at.FromDatetime(task.completed_at)
    if task.callback_url:
        result.callback.url = task.callback_url
        result.callback.mode = (
            task_pb2.CALLBACK_MODE_BATCHED
            if task.callback_mode == "batched"
            else task_pb2.CALLBACK_MODE_IMMEDIATE
        )
        result.callback.include_inline_result = task.include_inline_result
    return result
