"""Typed failures of the image building blocks, each with a stable `code`.

The codes are the lower-case names of `imgpipe.v1.ErrorCode` (`invalid_image` is
`ERROR_CODE_INVALID_IMAGE`), so a stage maps an exception to the task's error without a table.
`retryable` tells the stage whether to send the message to a retry tier (the same input may succeed
later) or to end the task now. This module imports nothing heavy: netguard builds on it too.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar


class ErrorCode(StrEnum):
    INVALID_IMAGE = "invalid_image"
    UNSUPPORTED_FORMAT = "unsupported_format"
    IMAGE_TOO_LARGE = "image_too_large"
    FETCH_FAILED = "fetch_failed"
    NO_PET_DETECTED = "no_pet_detected"
    MODEL_ERROR = "model_error"
    TIMEOUT = "timeout"


class PipelineError(Exception):
    """Base of every typed failure; `code` is stable, the message is for humans."""

    code: ClassVar[ErrorCode]
    retryable: bool = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retryable is not None:
            self.retryable = retryable


class InvalidImage(PipelineError):
    """Not a decodable image: empty, truncated, corrupt, or zero-sized."""

    code = ErrorCode.INVALID_IMAGE


class UnsupportedFormat(PipelineError):
    """A real image, but not JPEG, PNG or WebP."""

    code = ErrorCode.UNSUPPORTED_FORMAT


class ImageTooLarge(PipelineError):
    """Over the byte or pixel cap (including decompression bombs)."""

    code = ErrorCode.IMAGE_TOO_LARGE


class NoPetDetected(PipelineError):
    """The detector found no pet that the policy accepts."""

    code = ErrorCode.NO_PET_DETECTED


class ModelError(PipelineError):
    """A stage backend failed. Retryable by default: remote model servers fail transiently.

    Local CPU backends raise it with `retryable=False`, since the same input fails the same way.
    """

    code = ErrorCode.MODEL_ERROR
    retryable = True
