"""One resilient HTTP client shared by every model-server backend (see docs/model-backends.md).

`ResilientHttpClient` wraps an `httpx.Client` with, per request:
- timeouts: connect, and read/write/pool (each read waits at most `timeout_seconds`);
- a bounded number of requests in flight (`max_concurrency`, a semaphore; waiting for a slot is
  bounded too, and a slot is not held while backing off);
- retries with exponential backoff and full jitter (tenacity) for connection errors, timeouts, 429
  and 5xx; a `Retry-After` header (429, 503) is honoured when it is at most `retry_after_cap_seconds`,
  otherwise the call gives up at once: longer waits belong to the pipeline's Kafka delay tiers, which
  wait without holding a worker;
- a circuit breaker (pybreaker): after `breaker_fail_max` consecutive server failures (connection
  errors, timeouts, 5xx) calls fail fast without touching the network for `breaker_reset_seconds`,
  then one trial call decides. Answers that show the server is alive (any 4xx, 429 included) never
  count as failures.

Every failure leaves as `ModelError`, `retryable=True` when the same request may succeed later (open
circuit, retries exhausted on transient errors, local saturation), `retryable=False` when it cannot
(4xx other than 429, and, in the backends, malformed answers).

The breaker is used through `CircuitBreaker.calling()`, not `call()`: `call()` holds the breaker's
lock for the whole guarded call, which would allow one request at a time.
"""

from __future__ import annotations

import email.utils
import logging
import math
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import httpx
import tenacity

from imgpipe.imaging.errors import ModelError

# pybreaker imports redis (~0.4 s of CPU, more under load) when it is installed, only for its Redis
# state storage, which imgpipe does not use; redis is installed for the Celery baseline benchmark.
# Each stage paid that at start-up. Hidden while pybreaker loads, it sets HAS_REDIS_SUPPORT = False.
_HIDE_REDIS = "redis" not in sys.modules
if _HIDE_REDIS:
    sys.modules["redis"] = None  # type: ignore[assignment]
try:
    import pybreaker
finally:
    if _HIDE_REDIS:
        del sys.modules["redis"]

log = logging.getLogger(__name__)

USER_AGENT: Final = "imgpipe-model-backend/1"
_DETAIL_CHARS: Final = 300  # of an error body, quoted in messages


@dataclass(frozen=True, kw_only=True)
class HttpBackendConfig:
    """How a backend reaches its model server. Worst case for one call, before the pipeline's own
    retry: (max_retries + 1) x timeout plus the backoff waits (each at most max_backoff_seconds)."""

    base_url: str  # scheme, host, port and optional path prefix, e.g. http://kserve:8080
    model: str  # the server's model name (OIP path segment, or the `model` form field)
    timeout_seconds: float = 60.0  # read, write and connection-pool waits, each
    connect_timeout_seconds: float = 3.0
    max_concurrency: int = 4  # requests in flight from this process to this server
    max_retries: int = 2  # retries after the first attempt, for transient failures only
    backoff_seconds: float = 0.5  # scale of the exponential backoff: attempt n waits U(0, b * 2^(n-1))
    max_backoff_seconds: float = 8.0
    retry_after_cap_seconds: float = 10.0  # a longer Retry-After ends the call (retryable) instead
    breaker_fail_max: int = 5  # consecutive server failures that open the circuit
    breaker_reset_seconds: float = 30.0  # how long an open circuit fails fast before a trial call
    acquire_timeout_seconds: float | None = None  # wait for a free slot; None: timeout_seconds
    api_key: str | None = field(default=None, repr=False)  # sent as "Authorization: Bearer ..."

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, not {self.base_url!r}")
        if not self.model:
            raise ValueError("model must not be empty")
        positive = {
            "timeout_seconds": self.timeout_seconds,
            "connect_timeout_seconds": self.connect_timeout_seconds,
            "max_concurrency": self.max_concurrency,
            "breaker_fail_max": self.breaker_fail_max,
            "breaker_reset_seconds": self.breaker_reset_seconds,
        }
        non_negative = {
            "max_retries": self.max_retries,
            "backoff_seconds": self.backoff_seconds,
            "max_backoff_seconds": self.max_backoff_seconds,
            "retry_after_cap_seconds": self.retry_after_cap_seconds,
            "acquire_timeout_seconds": self.acquire_timeout_seconds or 0,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"{name} must be positive, not {value}")
        for name, value in non_negative.items():
            if not value >= 0:
                raise ValueError(f"{name} must not be negative, not {value}")


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or HTTP-date); None if absent/invalid."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class _AttemptFailed(Exception):
    """One attempt's failure, internal to the retry loop; `ResilientHttpClient.request` maps it."""


class _Transient(_AttemptFailed):
    """May succeed if repeated: connection error, timeout, 429, 5xx."""

    def __init__(self, reason: str, *, status: int | None = None, retry_after: float | None = None):
        super().__init__(reason)
        self.status = status
        self.retry_after = retry_after


class _Rejected(_AttemptFailed):
    """The server refused this request (4xx other than 429, or a redirect): repeating cannot help."""

    def __init__(self, reason: str, *, status: int):
        super().__init__(reason)
        self.status = status


class _Saturated(_AttemptFailed):
    """No free concurrency slot within the acquire timeout: this process is overloaded, not the server."""


def _server_answered(exc: BaseException) -> bool:
    """pybreaker exclusion: the server is alive and answered (4xx, 429 included)."""
    status = getattr(exc, "status", None)
    return isinstance(exc, _AttemptFailed) and status is not None and 400 <= status < 500


class _BreakerLog(pybreaker.CircuitBreakerListener):
    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        level = logging.WARNING if new_state.name == pybreaker.STATE_OPEN else logging.INFO
        old = old_state.name if old_state else "-"
        log.log(level, "circuit breaker %s: %s -> %s", cb.name, old, new_state.name)


def json_body(response: httpx.Response, *, what: str) -> Any:
    """The decoded JSON of a 2xx answer; anything else is a malformed answer (permanent)."""
    try:
        return response.json()
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ModelError(f"{what}: response is not JSON: {exc}", retryable=False) from exc


def _detail(response: httpx.Response) -> str:
    text = response.text.strip().replace("\n", " ")
    return text if len(text) <= _DETAIL_CHARS else text[:_DETAIL_CHARS] + "..."


class ResilientHttpClient:
    """Timeouts, bounded concurrency, retries and a circuit breaker around one model server.

    Thread-safe; make one per backend and keep it for the process's life (`close()` at the end).
    `name` prefixes every error message and names the breaker in logs. `transport` and `sleep` are
    for tests (an `httpx.MockTransport`, or a transport that counts requests; a recording sleep).
    """

    def __init__(
        self,
        config: HttpBackendConfig,
        *,
        name: str,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config
        self.name = name
        headers = {"User-Agent": USER_AGENT}
        if config.api_key:
            headers["Authorization"] = f"Bearer {config.api_key}"
        self._client = httpx.Client(
            base_url=config.base_url,
            headers=headers,
            timeout=httpx.Timeout(config.timeout_seconds, connect=config.connect_timeout_seconds),
            limits=httpx.Limits(
                max_connections=config.max_concurrency, max_keepalive_connections=config.max_concurrency
            ),
            follow_redirects=False,
            transport=transport,
        )
        self._slots = threading.BoundedSemaphore(config.max_concurrency)
        self._acquire_timeout = (
            config.timeout_seconds
            if config.acquire_timeout_seconds is None
            else config.acquire_timeout_seconds
        )
        self._sleep = sleep
        self._backoff = tenacity.wait_random_exponential(
            multiplier=config.backoff_seconds, max=config.max_backoff_seconds
        )
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=config.breaker_fail_max,
            reset_timeout=config.breaker_reset_seconds,
            exclude=[_server_answered],
            listeners=[_BreakerLog()],
            name=f"{name} {config.base_url}",
            throw_new_error_on_trip=False,  # the failure that trips it is the better message
        )

    @property
    def circuit_open(self) -> bool:
        """Whether calls currently fail fast (until the reset timeout lets a trial call through)."""
        return bool(self.breaker.current_state == pybreaker.STATE_OPEN)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A 2xx response, or `ModelError`. `kwargs` go to `httpx.Client.request` (json, data, files...).

        `path` is relative to `base_url` (a leading "/" is fine: httpx keeps the base's path prefix).
        """
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.config.max_retries + 1),
            wait=self._wait,
            retry=tenacity.retry_if_exception(self._should_retry),
            sleep=self._sleep,
            before_sleep=self._log_retry,
            reraise=True,
        )
        where = f"{self.name}: {method} {path}"
        try:
            response: httpx.Response = retrying(self._attempt, method, path, kwargs)
        except pybreaker.CircuitBreakerError:
            raise ModelError(
                f"{where}: circuit open after {self.config.breaker_fail_max} consecutive failures of "
                f"{self.config.base_url}; failing fast for {self.config.breaker_reset_seconds:g} s",
                retryable=True,
            ) from None
        except _Transient as exc:
            attempts = retrying.statistics.get("attempt_number", 1)
            suffix = "; circuit now open" if self.circuit_open else ""
            raise ModelError(f"{where}: {exc} (after {attempts} attempt(s)){suffix}", retryable=True) from exc
        except _Rejected as exc:
            raise ModelError(f"{where}: {exc}", retryable=False) from exc
        except _Saturated as exc:
            raise ModelError(f"{where}: {exc}", retryable=True) from exc
        except httpx.HTTPError as exc:  # not transient: invalid URL, unsupported protocol, local error
            raise ModelError(f"{where}: {type(exc).__name__}: {exc}", retryable=False) from exc
        return response

    def probe(self, path: str) -> bool:
        """One GET outside retries, breaker and slots (for readiness checks): is the answer 200?"""
        try:
            response = self._client.get(path, timeout=self.config.connect_timeout_seconds)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def close(self) -> None:
        self._client.close()

    def _attempt(self, method: str, path: str, kwargs: dict[str, Any]) -> httpx.Response:
        if not self._slots.acquire(timeout=self._acquire_timeout):
            raise _Saturated(
                f"all {self.config.max_concurrency} request slots busy for {self._acquire_timeout:g} s"
            )
        try:
            with self.breaker.calling():
                return self._send(method, path, kwargs)
        finally:
            self._slots.release()

    def _send(self, method: str, path: str, kwargs: dict[str, Any]) -> httpx.Response:
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise _Transient(f"{type(exc).__name__}: no answer in time ({exc})") from exc
        except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}") from exc
        status = response.status_code
        if 200 <= status < 300:
            return response
        if status == 429 or status >= 500:
            retry_after = (
                parse_retry_after(response.headers.get("Retry-After")) if status in (429, 503) else None
            )
            reason = f"HTTP {status}: {_detail(response)}"
            if retry_after is not None:
                reason += f" (Retry-After {retry_after:g} s)"
            raise _Transient(reason, status=status, retry_after=retry_after)
        raise _Rejected(f"HTTP {status}: {_detail(response)}", status=status)

    def _should_retry(self, exc: BaseException) -> bool:
        if not isinstance(exc, _Transient) or self.circuit_open:
            return False
        return exc.retry_after is None or exc.retry_after <= self.config.retry_after_cap_seconds

    def _wait(self, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Transient) and exc.retry_after is not None:
            return exc.retry_after
        return float(self._backoff(state))

    def _log_retry(self, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "%s: attempt %d/%d failed (%s); retrying in %.2f s",
            self.name,
            state.attempt_number,
            self.config.max_retries + 1,
            exc,
            wait,
        )
