"""The `code` values of the HTTP API's problem+json errors, apart from the FastAPI handlers in
imgpipe.ingest.problems: the admin services that run without the HTTP API (the projector's callback
replay) name these codes too, and importing fastapi for an enum cost them ~0.6 s at start-up."""

from __future__ import annotations

import enum


class ProblemCode(enum.StrEnum):
    """Every `code` a problem body can carry: clients switch on these, never on `detail`."""

    INVALID_REQUEST = "invalid_request"
    INVALID_PAGE_TOKEN = "invalid_page_token"
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    ALREADY_FINISHED = "already_finished"
    NOT_FINISHED = "not_finished"
    NO_CALLBACK = "no_callback"
    NOT_REPLAYABLE = "not_replayable"  # a dead letter whose origin is unknown
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    DUPLICATE_IDEMPOTENCY_KEY = "duplicate_idempotency_key"
    UNSTORABLE_REQUEST = "unstorable_request"
    UNAVAILABLE = "unavailable"
    REQUEST_TOO_LARGE = "request_too_large"
    IMAGE_TOO_LARGE = "image_too_large"
    BATCH_TOO_LARGE = "batch_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    RATE_LIMITED = "rate_limited"
    KAFKA_UNAVAILABLE = "kafka_unavailable"
    HTTP_ERROR = "http_error"  # any other error the HTTP layer raises before a route runs
