"""The HTTP API's request and response bodies (and the submit topic's JSON, validated the same way)."""

from __future__ import annotations

import base64
import binascii
import enum
import uuid
from datetime import datetime
from typing import Annotated, Self

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, model_validator

Metadata = Annotated[dict[str, Annotated[str, Field(max_length=1024)]], Field(max_length=32)]
Prompt = Annotated[str, Field(min_length=1, max_length=4000)]


class CallbackMode(enum.StrEnum):
    IMMEDIATE = "immediate"
    BATCHED = "batched"


class ImageInput(BaseModel):
    """Exactly one of an image URL (fetched by detect, SSRF-guarded) or inline base64 bytes."""

    image_url: AnyHttpUrl | None = None
    image_base64: str | None = None

    @model_validator(mode="after")
    def _exactly_one_image(self) -> Self:
        if (self.image_url is None) == (self.image_base64 is None):
            raise ValueError("give exactly one of image_url and image_base64")
        return self

    def inline_bytes(self) -> bytes | None:
        if self.image_base64 is None:
            return None
        try:
            return base64.b64decode(self.image_base64, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"image_base64 is not valid base64: {exc}") from None


class CallbackFields(BaseModel):
    callback_url: AnyHttpUrl | None = None
    callback_mode: CallbackMode = CallbackMode.IMMEDIATE
    include_inline_result: bool = Field(
        default=False, description="Also send the result image as base64 in the callback (size-capped)."
    )


class SubmitTask(ImageInput, CallbackFields):
    model_config = ConfigDict(extra="forbid")

    prompt: Prompt
    metadata: Metadata = Field(default_factory=dict)
    time_limit_seconds: float | None = Field(
        default=None,
        gt=0,
        le=86400,
        description="Fail the task with `timeout` if it has not ended this long after acceptance; "
        "capped by the service's own limit.",
    )


class SubmitTopicTask(SubmitTask):
    """What external producers publish to the submit topic: a task plus who it is for."""

    tenant_id: str = Field(min_length=1, max_length=64)
    idempotency_key: str | None = Field(default=None, max_length=255)


class BatchItem(ImageInput):
    model_config = ConfigDict(extra="forbid")

    prompt: Prompt
    metadata: Metadata = Field(default_factory=dict)
    idempotency_key: str | None = Field(default=None, max_length=255)


class SubmitBatch(CallbackFields):
    """Many tasks sharing one callback URL (the old BatchSubmitTaskView)."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[BatchItem] = Field(min_length=1)


class TaskErrorView(BaseModel):
    code: str
    message: str


class CallbackAttemptView(BaseModel):
    attempted_at: datetime
    status_code: int | None
    latency_ms: int | None
    error: str | None
    outcome: str


class CallbackView(BaseModel):
    url: str | None
    mode: CallbackMode | None
    status: str
    attempts: list[CallbackAttemptView] = Field(default_factory=list)


class TaskView(BaseModel):
    id: uuid.UUID
    state: str = Field(description="queued | processing | succeeded | failed | canceled")
    stage: str | None
    progress: float
    prompt: str
    error: TaskErrorView | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    processing_ms: int | None
    result_url: str | None = Field(description="Presigned URL of the RGBA PNG result, when succeeded.")
    callback: CallbackView
    metadata: dict[str, str]
    batch_id: uuid.UUID | None


class BatchView(BaseModel):
    batch_id: uuid.UUID
    tasks: list[TaskView]


class TaskPage(BaseModel):
    tasks: list[TaskView]
    next_page_token: str | None
