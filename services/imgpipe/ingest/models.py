"""The HTTP API's request and response bodies (and the submit topic's JSON, validated the same way)."""

from __future__ import annotations

import base64
import binascii
import enum
import re
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    Tag,
    WithJsonSchema,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from imgpipe.store.models import CallbackOutcome, CallbackStatus, TaskState
from imgpipe.v1 import task_pb2


def _proto_names(enum_type: EnumTypeWrapper, prefix: str) -> list[str]:
    """A proto enum's value names as the API spells them: without prefix, lower case."""
    return [
        value.name.removeprefix(prefix).lower()
        for value in enum_type.DESCRIPTOR.values
        if not value.name.endswith("_UNSPECIFIED")
    ]


# Declared as enums in the OpenAPI document; stored and passed around as plain strings.
TaskErrorCode = Annotated[
    str, WithJsonSchema({"type": "string", "enum": _proto_names(task_pb2.ErrorCode, "ERROR_CODE_")})
]
StageName = Annotated[str, WithJsonSchema({"type": "string", "enum": _proto_names(task_pb2.Stage, "STAGE_")})]
# Standard base64 with padding, exactly what `base64.b64decode(validate=True)` takes.
BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"

# Postgres text and jsonb cannot hold U+0000, and a lone UTF-16 surrogate is not encodable as UTF-8.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str) -> str:
    """`text` unchanged, or ValueError when the task store could not hold it."""
    if _UNSTORABLE.search(text):
        raise ValueError("contains U+0000 or a lone UTF-16 surrogate, which cannot be stored")
    return text


def make_storable(text: str) -> str:
    """`text` with what the task store cannot hold replaced by U+FFFD (for recording bad input)."""
    return _UNSTORABLE.sub("\ufffd", text)


StorableText = Annotated[str, AfterValidator(storable)]
Metadata = Annotated[
    dict[
        Annotated[StorableText, Field(min_length=1, max_length=64)],
        Annotated[StorableText, Field(max_length=1024)],
    ],
    Field(max_length=32),
]
Prompt = Annotated[StorableText, Field(min_length=1, max_length=4000)]
# Empty is refused rather than taken as absent: it would name one task for every such submit.
IdempotencyKey = Annotated[StorableText, Field(min_length=1, max_length=255)]

RFC3339_DATE = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]")


def _date_time_text(value: object) -> object:
    # pydantic also reads a bare number as Unix seconds; the document promises RFC 3339 `date-time`.
    if not isinstance(value, datetime) and not (isinstance(value, str) and RFC3339_DATE.match(value)):
        raise ValueError("an RFC 3339 date-time, e.g. 2026-01-31T12:00:00Z")
    return value


DateTimeQuery = Annotated[datetime, BeforeValidator(_date_time_text)]


class CallbackMode(enum.StrEnum):
    IMMEDIATE = "immediate"
    BATCHED = "batched"


class ImageInput(BaseModel):
    """Exactly one of an image URL (fetched by detect, SSRF-guarded) or inline base64 bytes.

    The HTTP API takes the two as alternative bodies (`*ByUrl`, `*Inline`, a oneOf in its document,
    so generated clients offer them as such); the submit topic's JSON Schema says the same.
    """

    image_url: AnyHttpUrl | None = None
    image_base64: Annotated[str, Field(min_length=4, pattern=BASE64_PATTERN)] | None = Field(
        default=None, description="The image file, standard base64 with padding."
    )

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


# Request bodies use Strict* numbers and booleans: lax pydantic would read 0 or "no" as false and "5" as 5,
# accepting what the document calls invalid.


class CallbackFields(BaseModel):
    callback_url: AnyHttpUrl | None = None
    callback_mode: CallbackMode = CallbackMode.IMMEDIATE
    include_inline_result: StrictBool = Field(
        default=False, description="Also send the result image as base64 in the callback (size-capped)."
    )


class SubmitTask(ImageInput, CallbackFields):
    model_config = ConfigDict(extra="forbid")

    prompt: Prompt
    metadata: Metadata = Field(default_factory=dict)
    time_limit_seconds: StrictFloat | None = Field(
        default=None,
        gt=0,
        le=86400,
        description="Fail the task with `timeout` if it has not ended this long after acceptance; "
        "capped by the service's own limit.",
    )


class SubmitTopicTask(SubmitTask):
    """What external producers publish to the submit topic: a task plus who it is for."""

    tenant_id: Annotated[StorableText, Field(min_length=1, max_length=64)]
    idempotency_key: IdempotencyKey | None = None


class SubmitTaskByUrl(SubmitTask):
    """A task whose image detect fetches from a URL."""

    image_url: AnyHttpUrl
    image_base64: SkipJsonSchema[None] = None


class SubmitTaskInline(SubmitTask):
    """A task whose image is in the request."""

    image_url: SkipJsonSchema[None] = None
    image_base64: Annotated[str, Field(min_length=4, pattern=BASE64_PATTERN)] = Field(
        description="The image file, standard base64 with padding."
    )


def _members(value: object) -> dict[str, Any] | None:
    """A body's members, as JSON or as an already validated model; None when it is no object at all."""
    if isinstance(value, BaseModel):
        return vars(value)
    return value if isinstance(value, dict) else None


def _one_of_by_member(member: str, having: tuple[str, Any], lacking: tuple[str, Any]) -> Any:
    """Two alternative bodies told apart by whether `member` is in it: a oneOf in the document."""

    def kind(value: object) -> str:
        return having[0] if member in (_members(value) or {}) else lacking[0]

    return Annotated[
        Annotated[having[1], Tag(having[0])] | Annotated[lacking[1], Tag(lacking[0])], Discriminator(kind)
    ]


def _image_kind(value: object) -> str | None:
    """Which alternative a body is, by the image member it has (both or neither: no alternative)."""
    fields = _members(value)
    if fields is None:
        return None  # not a JSON object at all: no alternative fits (a 422, not a crash)
    has_url, has_inline = fields.get("image_url") is not None, fields.get("image_base64") is not None
    return None if has_url == has_inline else "url" if has_url else "inline"


def _image_alternatives(by_url: type[BaseModel], inline: type[BaseModel]) -> Any:
    return Annotated[
        Annotated[by_url, Tag("url")] | Annotated[inline, Tag("inline")],
        Discriminator(
            _image_kind,
            custom_error_type="image_input",
            custom_error_message="give exactly one of image_url and image_base64",
        ),
    ]


class BatchItem(ImageInput):
    model_config = ConfigDict(extra="forbid")

    prompt: Prompt
    metadata: Metadata = Field(default_factory=dict)
    idempotency_key: IdempotencyKey | None = None


class BatchItemByUrl(BatchItem):
    image_url: AnyHttpUrl
    image_base64: SkipJsonSchema[None] = None


class BatchItemInline(BatchItem):
    image_url: SkipJsonSchema[None] = None
    image_base64: Annotated[str, Field(min_length=4, pattern=BASE64_PATTERN)] = Field(
        description="The image file, standard base64 with padding."
    )


if TYPE_CHECKING:
    SubmitTaskBody = SubmitTaskByUrl | SubmitTaskInline
    BatchItemBody = BatchItemByUrl | BatchItemInline
else:
    SubmitTaskBody = _image_alternatives(SubmitTaskByUrl, SubmitTaskInline)
    BatchItemBody = _image_alternatives(BatchItemByUrl, BatchItemInline)


class SubmitBatch(CallbackFields):
    """Many tasks sharing one callback URL (the old BatchSubmitTaskView)."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[BatchItemBody] = Field(min_length=1)


class TaskErrorView(BaseModel):
    code: TaskErrorCode
    message: str


class CallbackAttemptView(BaseModel):
    webhook_id: str = Field(description="The `webhook-id` header sent; the same on every retry.")
    attempt: int = Field(description="1-based try of this delivery.")
    attempted_at: datetime
    status_code: int | None = Field(description="The receiver's HTTP status; null when no answer came.")
    latency_ms: int | None = Field(description="Null when nothing was sent (disabled, rate limited).")
    error: str | None
    outcome: CallbackOutcome
    next_attempt_at: datetime | None = Field(default=None, description="When retrying or rate limited.")


class CallbackView(BaseModel):
    url: str | None
    mode: CallbackMode | None
    status: CallbackStatus
    attempts: list[CallbackAttemptView] | None = Field(
        default=None,
        description="Delivery attempts, oldest first, at most the last 50. Only GET /v1/tasks/{id} "
        "lists them; other answers leave this null.",
    )


class TaskView(BaseModel):
    id: uuid.UUID
    state: TaskState
    stage: StageName | None = Field(description="While processing: the stage working on it.")
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


class WebhookSecrets(BaseModel):
    secrets: list[str] = Field(
        description="The tenant's signing secrets (Standard Webhooks `whsec_...`), current first; during "
        "a key rotation a callback may be signed with any of them."
    )


# -- admin API ---------------------------------------------------------------------------------


class CallbackPolicyBody(BaseModel):
    """A callback policy for one URL or host. A zero number means the callback service's default."""

    model_config = ConfigDict(extra="forbid")

    scope: Literal["url", "host"] = Field(
        description="`url` when the key is a callback URL, `host` when it is a host name."
    )
    rate_per_second: StrictFloat = Field(default=0, ge=0, le=10_000, description="Token-bucket refill rate.")
    burst: StrictInt = Field(default=0, ge=0, le=100_000, description="Token-bucket size.")
    batch_size: StrictInt = Field(default=0, ge=0, le=1000, description="Batched mode: results per request.")
    max_delay_ms: StrictInt = Field(default=0, ge=0, le=3_600_000, description="Batched mode: longest wait.")
    mode_override: CallbackMode | None = Field(
        default=None, description="Send every result this way, whatever the client asked for."
    )
    timeout_ms: StrictInt = Field(default=0, ge=0, le=120_000, description="Per-request HTTP timeout.")
    disabled: StrictBool = Field(
        default=False, description="Send nothing; attempts are recorded as disabled."
    )


class CallbackPolicyView(CallbackPolicyBody):
    key: str = Field(description="The callback URL or host name the policy applies to.")
    updated_at: datetime | None


class CallbackPolicyList(BaseModel):
    policies: list[CallbackPolicyView]


class ReplayTask(BaseModel):
    """One ended task's callback, again."""

    model_config = ConfigDict(extra="forbid")

    task_id: uuid.UUID


class ReplayCallbackUrl(BaseModel):
    """The callbacks of a callback URL's tasks that ended since a time, again."""

    model_config = ConfigDict(extra="forbid")

    callback_url: AnyHttpUrl
    since: Annotated[AwareDatetime, BeforeValidator(_date_time_text)] = Field(
        description="RFC 3339: tasks completed at or after it."
    )
    only_failed: StrictBool = Field(default=True, description="Only tasks whose callback status is failed.")


# A body naming both a task and a URL fits neither alternative (extra fields are refused).
if TYPE_CHECKING:
    ReplayRequest = ReplayTask | ReplayCallbackUrl
else:
    ReplayRequest = _one_of_by_member("task_id", ("task", ReplayTask), ("url", ReplayCallbackUrl))


class ReplayView(BaseModel):
    replayed: int = Field(description="How many tasks' callbacks were queued again.")
    replay_id: str = Field(description="Shared by the replayed deliveries; their webhook-ids derive from it.")
    truncated: bool = Field(
        description="True when more tasks matched than one replay takes (the oldest were replayed); "
        "repeat the request (with only_failed) or move `since` past the last one to continue."
    )
    limit: int


class DeadLetterView(BaseModel):
    """A message the pipeline could not handle, as it sits on the dead-letter topic."""

    id: str = Field(description="`<topic>:<partition>:<offset>` of the dead letter.")
    topic: str
    partition: int
    offset: int
    dead_lettered_at: datetime | None = Field(description="When it was dead-lettered (producer time).")
    age_seconds: float | None
    reason: str | None = Field(description="Why: poison (undecodable, invalid) or the last error.")
    origin_topic: str | None = Field(description="Where it first arrived; a replay sends it there.")
    origin_partition: int | None
    origin_offset: int | None
    group: str | None = Field(description="The consumer group (or app) that gave up on it.")
    key: str | None = Field(description="The original message key, as UTF-8 text.")
    payload_bytes: int
    replay_count: int = Field(description="How often it had been replayed before it landed here again.")
    replayed_from: str | None = Field(description="The dead letter it was replayed from, if it was.")


class DeadLetterDetail(DeadLetterView):
    headers: dict[str, str] = Field(description="Every header, as UTF-8 text.")
    payload_base64: str | None


class DeadLetterList(BaseModel):
    dead_letters: list[DeadLetterView] = Field(description="Oldest first.")
    truncated: bool = Field(description="More matched than `limit`; narrow with `since` to see later ones.")
    limit: int


# `<topic>:<partition>:<offset>`; Kafka topic names are [a-zA-Z0-9._-].
DEAD_LETTER_ID_PATTERN = r"^[A-Za-z0-9._-]+:[0-9]+:[0-9]+$"
DeadLetterId = Annotated[str, Field(pattern=DEAD_LETTER_ID_PATTERN, max_length=512)]


class ReplayDeadLetterIds(BaseModel):
    """Dead letters by id."""

    model_config = ConfigDict(extra="forbid")

    ids: list[DeadLetterId] = Field(min_length=1, max_length=1000)


class ReplayDeadLettersFrom(BaseModel):
    """The dead letters from one origin topic, narrowed by reason and time, oldest first."""

    model_config = ConfigDict(extra="forbid")

    origin: str = Field(
        min_length=1, description="An origin topic's name, or its registry key (tasks-submit)."
    )
    reason: str | None = Field(default=None, description="A substring of the reason.")
    since: Annotated[AwareDatetime, BeforeValidator(_date_time_text)] | None = Field(
        default=None, description="Dead-lettered at or after."
    )
    limit: StrictInt = Field(default=100, ge=1, le=1000, description="At most this many, oldest first.")


if TYPE_CHECKING:
    DeadLetterReplayRequest = ReplayDeadLetterIds | ReplayDeadLettersFrom
else:
    DeadLetterReplayRequest = _one_of_by_member(
        "ids", ("ids", ReplayDeadLetterIds), ("origin", ReplayDeadLettersFrom)
    )


class ReplayedDeadLetter(BaseModel):
    id: str = Field(description="The dead letter's id.")
    topic: str = Field(description="The origin topic it was produced to.")
    partition: int
    offset: int


class DeadLetterReplayView(BaseModel):
    replayed: list[ReplayedDeadLetter]
    truncated: bool = Field(description="With origin: more matched than `limit` (the oldest were replayed).")
