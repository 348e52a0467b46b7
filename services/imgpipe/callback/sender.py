"""One webhook POST through the SSRF guard, reported as a `SendResult` instead of an exception.

| what happened | verdict | status_code |
| --- | --- | --- |
| 2xx | DELIVERED | the status |
| 410 Gone | GONE (the receiver asked us to stop) | 410 |
| the egress policy refused the URL, its address, or a redirect | REFUSED (retrying cannot help) | 0 |
| any other status, a timeout, a connection error, anything else | RETRY | the status, or 0 |

For 429 and 503, `retry_after_seconds` holds the receiver's Retry-After (delta-seconds or an
HTTP-date), capped at `MAX_RETRY_AFTER_SECONDS`; the caller waits at least that long.

Each `send` has its own deadline (`timeout_seconds`, covering resolution, connect, upload and the
answer), so a receiver that never answers costs one call at most that long and holds up no other call:
`imgpipe.netguard` opens a connection per request (no pooling, by design; see docs/egress.md).
"""

from __future__ import annotations

import email.utils
import math
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from types import TracebackType
from typing import Final, Self, TypeAlias

from imgpipe.netguard import AsyncGuardedClient, EgressPolicy, EgressRefused, FetchFailed
from imgpipe.v1 import callback_pb2

MAX_RETRY_AFTER_SECONDS: Final = 3600.0
RETRY_AFTER_STATUSES: Final = frozenset({429, 503})
USER_AGENT: Final = "imgpipe-webhooks/1"
_MAX_ERROR_CHARS: Final = 300

Verdict: TypeAlias = callback_pb2.DeliveryVerdict.ValueType


@dataclass(frozen=True)
class SendResult:
    verdict: Verdict
    status_code: int  # 0 when no response arrived
    latency_ms: int
    error: str = ""  # short, for humans; empty when delivered
    retry_after_seconds: float | None = None  # from Retry-After on 429 / 503


class WebhookSender:
    """Posts webhooks under `policy` (its `allow_networks`, ports, byte cap; its total_timeout is
    replaced by each call's `timeout_seconds`). Close with `aclose` or use as an async context manager."""

    def __init__(self, policy: EgressPolicy, *, verify: ssl.SSLContext | bool = True) -> None:
        self._client = AsyncGuardedClient(policy, verify=verify, headers={"User-Agent": USER_AGENT})

    async def send(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout_seconds: float
    ) -> SendResult:
        """POST `body` with `headers` to `url`, done within `timeout_seconds`; never raises for what
        the network or the receiver does."""
        if not timeout_seconds > 0:
            raise ValueError(f"timeout_seconds must be > 0, got {timeout_seconds}")
        started = time.monotonic()
        try:
            got = await self._client.post(url, content=body, headers=headers, total_timeout=timeout_seconds)
        except EgressRefused as exc:
            return _result(callback_pb2.DELIVERY_VERDICT_REFUSED, 0, started, f"refused: {exc.message}")
        except FetchFailed as exc:
            status = exc.status or 0
            if status == 410:
                return _result(callback_pb2.DELIVERY_VERDICT_GONE, status, started, "HTTP 410 Gone")
            retry_after = None
            if status in RETRY_AFTER_STATUSES:
                retry_after = parse_retry_after(_header(exc.headers, "retry-after"))
            if not status and not exc.retryable:  # a name that does not exist, a certificate that fails
                return _result(callback_pb2.DELIVERY_VERDICT_REFUSED, 0, started, exc.message)
            error = f"HTTP {status}" if status else exc.message
            return _result(callback_pb2.DELIVERY_VERDICT_RETRY, status, started, error, retry_after)
        except Exception as exc:  # ResponseTooLarge, or anything unforeseen: the next try may do better
            return _result(callback_pb2.DELIVERY_VERDICT_RETRY, 0, started, f"{type(exc).__name__}: {exc}")
        if 200 <= got.status < 300:
            return _result(callback_pb2.DELIVERY_VERDICT_DELIVERED, got.status, started, "")
        # netguard raises for every other final status; keep the contract if that ever changes.
        return _result(callback_pb2.DELIVERY_VERDICT_RETRY, got.status, started, f"HTTP {got.status}")

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a Retry-After value, delta-seconds ("120") or an HTTP-date, between 0 and
    `MAX_RETRY_AFTER_SECONDS`; None when absent or unreadable. `now` (Unix seconds) is for tests."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if math.isnan(seconds):
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # "-0000": UTC, as HTTP-dates are
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    elif seconds < 0:
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive lookup whatever kind of mapping holds the headers."""
    return next((value for key, value in headers.items() if key.lower() == name), None)


def _result(
    verdict: Verdict, status: int, started: float, error: str, retry_after: float | None = None
) -> SendResult:
    if len(error) > _MAX_ERROR_CHARS:
        error = error[: _MAX_ERROR_CHARS - 3] + "..."
    latency_ms = round((time.monotonic() - started) * 1000)
    return SendResult(verdict, status, latency_ms, error, retry_after)
