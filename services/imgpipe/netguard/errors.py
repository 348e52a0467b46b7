"""Failures of guarded outbound HTTP, with the same `code`/`retryable` contract as the imaging errors.

`EgressRefused`: the egress policy refused the URL or the address it resolves to; permanent.
`FetchFailed`: the network or the server failed; `retryable` says whether the same request may succeed
later (connection errors, timeouts, 5xx, 408, 429) or not (other 4xx, too many redirects, bad TLS
certificate, a name that does not exist).
`ResponseTooLarge`: the body is over the policy's byte cap; permanent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from imgpipe.imaging.errors import ErrorCode, PipelineError


class EgressRefused(PipelineError):
    """The policy refused the scheme, port, address (before connecting) or a redirect."""

    code = ErrorCode.FETCH_FAILED
    retryable = False


class FetchFailed(PipelineError):
    """The request did not produce a usable response. `status` is the HTTP status when there was one,
    and `headers` that response's headers (case-insensitive; empty without a response), e.g. for
    Retry-After."""

    code = ErrorCode.FETCH_FAILED

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, retryable=retryable)
        self.status = status
        self.headers: Mapping[str, str] = headers if headers is not None else {}

    def __reduce__(
        self,
    ) -> tuple[Callable[..., FetchFailed], tuple[type[FetchFailed], str, bool, int | None, dict[str, str]]]:
        # `retryable` is keyword-only and required, so default pickling (cls(message)) would fail; a
        # stage pool worker sends its errors to the parent by pickle.
        return (
            _rebuild_fetch_failed,
            (type(self), self.message, self.retryable, self.status, dict(self.headers)),
        )


def _rebuild_fetch_failed(
    cls: type[FetchFailed], message: str, retryable: bool, status: int | None, headers: dict[str, str]
) -> FetchFailed:
    return cls(message, retryable=retryable, status=status, headers=headers)


class ResponseTooLarge(PipelineError):
    """The declared or received body is over `EgressPolicy.max_bytes`."""

    code = ErrorCode.IMAGE_TOO_LARGE
    retryable = False
