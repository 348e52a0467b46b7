"""Guarded GET (redirects followed, each hop re-checked) and POST (redirects refused), sync and async.

Every call has a deadline of `policy.total_timeout` over all hops and the body (the async `post` may
set its own), and reads at most `policy.max_bytes` of body. httpx errors come out as `FetchFailed`;
refusals as `EgressRefused`.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Self

import anyio
import httpx

from imgpipe.netguard.errors import EgressRefused, FetchFailed, ResponseTooLarge
from imgpipe.netguard.policy import EgressPolicy
from imgpipe.netguard.transport import AsyncGuardedTransport, GuardedTransport, check_url

REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
# Compressed bodies would be capped only after decompression; images are compressed already.
_DEFAULT_HEADERS: Final = {"Accept-Encoding": "identity"}


@dataclass(frozen=True)
class Fetched:
    status: int
    content: bytes
    content_type: str | None
    final_url: str  # after redirects, with the original host names (never the pinned address)


def fetch(url: str, policy: EgressPolicy, *, verify: ssl.SSLContext | bool = True) -> Fetched:
    """One guarded GET; for repeated calls keep a `GuardedClient` (it reuses the TLS context)."""
    with GuardedClient(policy, verify=verify) as client:
        return client.get(url)


class GuardedClient:
    """Sync guarded client, for the detect stage's image fetches."""

    def __init__(
        self,
        policy: EgressPolicy,
        *,
        verify: ssl.SSLContext | bool = True,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.policy = policy
        self._client = httpx.Client(
            transport=GuardedTransport(policy, verify=verify),
            headers={**_DEFAULT_HEADERS, **(headers or {})},
            follow_redirects=False,
            trust_env=False,  # no proxies from the environment: they would bypass the address pinning
        )

    def get(self, url: str) -> Fetched:
        """GET `url`, following up to `max_redirects` redirects; the body must fit `max_bytes`."""
        return self._send("GET", url, content=None, headers=None, follow=True)

    def post(self, url: str, *, content: bytes, headers: Mapping[str, str] | None = None) -> Fetched:
        """POST without following redirects; the response body is kept up to `max_bytes`, not an error."""
        return self._send("POST", url, content=content, headers=headers, follow=False)

    def _send(
        self, method: str, url: str, *, content: bytes | None, headers: Mapping[str, str] | None, follow: bool
    ) -> Fetched:
        # GET follows redirects and must fit the cap; POST (a webhook) refuses redirects, and once it
        # has a 2xx the hook was delivered, so an over-long answer is cut rather than an error.
        deadline = time.monotonic() + self.policy.total_timeout
        target = _parse(url, self.policy)
        for _ in range(self.policy.max_redirects + 1):
            timeout = _hop_timeout(self.policy, deadline, self.policy.total_timeout)
            request = self._client.build_request(
                method, target, content=content, headers=headers, timeout=timeout
            )
            with _translate_errors():
                response = self._client.send(request, stream=True)
                try:
                    next_target = _redirect_target(response, self.policy, follow=follow)
                    if next_target is None:
                        _check_final(response, self.policy, truncate=not follow)
                        body = bytearray()
                        for chunk in response.iter_bytes():
                            if _append_capped(body, chunk, self.policy, truncate=not follow):
                                break
                            if time.monotonic() > deadline:
                                raise _timed_out(self.policy.total_timeout)
                        return _fetched(response, body)
                finally:
                    response.close()
            target = next_target
        raise _too_many_redirects(url, self.policy)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncGuardedClient:
    """Async guarded client, for the callback service's webhooks (and async fetches)."""

    def __init__(
        self,
        policy: EgressPolicy,
        *,
        verify: ssl.SSLContext | bool = True,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.policy = policy
        self._client = httpx.AsyncClient(
            transport=AsyncGuardedTransport(policy, verify=verify),
            headers={**_DEFAULT_HEADERS, **(headers or {})},
            follow_redirects=False,
            trust_env=False,
        )

    async def get(self, url: str) -> Fetched:
        """GET `url`, following up to `max_redirects` redirects; the body must fit `max_bytes`."""
        return await self._send("GET", url, content=None, headers=None, follow=True)

    async def post(
        self,
        url: str,
        *,
        content: bytes,
        headers: Mapping[str, str] | None = None,
        total_timeout: float | None = None,
    ) -> Fetched:
        """POST without following redirects (a 3xx is `EgressRefused`); the response body is kept up to
        `max_bytes`, the rest is not read. `total_timeout` (seconds, > 0) replaces the policy's for this
        call, e.g. a per-URL webhook timeout."""
        if total_timeout is not None and not total_timeout > 0:
            raise ValueError(f"total_timeout must be > 0, got {total_timeout}")
        total = self.policy.total_timeout if total_timeout is None else total_timeout
        return await self._send("POST", url, content=content, headers=headers, follow=False, total=total)

    async def _send(
        self,
        method: str,
        url: str,
        *,
        content: bytes | None,
        headers: Mapping[str, str] | None,
        follow: bool,
        total: float | None = None,
    ) -> Fetched:
        total = self.policy.total_timeout if total is None else total
        try:
            with anyio.fail_after(total):
                return await self._hops(
                    method, url, content=content, headers=headers, follow=follow, total=total
                )
        except TimeoutError:
            raise _timed_out(total) from None

    async def _hops(
        self,
        method: str,
        url: str,
        *,
        content: bytes | None,
        headers: Mapping[str, str] | None,
        follow: bool,
        total: float,
    ) -> Fetched:
        deadline = time.monotonic() + total
        target = _parse(url, self.policy)
        for _ in range(self.policy.max_redirects + 1):
            timeout = _hop_timeout(self.policy, deadline, total)
            request = self._client.build_request(
                method, target, content=content, headers=headers, timeout=timeout
            )
            with _translate_errors():
                response = await self._client.send(request, stream=True)
                try:
                    next_target = _redirect_target(response, self.policy, follow=follow)
                    if next_target is None:
                        _check_final(response, self.policy, truncate=not follow)
                        body = bytearray()
                        async for chunk in response.aiter_bytes():
                            if _append_capped(body, chunk, self.policy, truncate=not follow):
                                break
                        return _fetched(response, body)
                finally:
                    await response.aclose()
            target = next_target
        raise _too_many_redirects(url, self.policy)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


def _parse(url: str, policy: EgressPolicy) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise EgressRefused(f"invalid URL {url!r}: {exc}") from None
    check_url(parsed, policy)
    return parsed


def _hop_timeout(policy: EgressPolicy, deadline: float, total: float) -> httpx.Timeout:
    """Each network wait of a hop is bounded by the time left when the hop starts."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise _timed_out(total)
    return httpx.Timeout(remaining, connect=min(policy.connect_timeout, remaining))


def _redirect_target(response: httpx.Response, policy: EgressPolicy, *, follow: bool) -> httpx.URL | None:
    """The checked URL a redirect response points to, or None when the response is not a redirect."""
    if response.status_code not in REDIRECT_STATUSES:
        return None
    if not follow:
        raise EgressRefused(f"{response.request.url} answered {response.status_code}; redirects are refused")
    location = response.headers.get("Location")
    if not location:
        raise FetchFailed(
            f"{response.status_code} without Location from {response.request.url}", retryable=False
        )
    try:
        target = response.request.url.join(location)
    except httpx.InvalidURL as exc:
        raise EgressRefused(f"invalid redirect Location {location!r}: {exc}") from None
    check_url(target, policy)
    return target


def _check_final(response: httpx.Response, policy: EgressPolicy, *, truncate: bool) -> None:
    """Refuse a non-2xx status, and (unless the body is to be truncated) a declared length over the cap."""
    status = response.status_code
    if not 200 <= status < 300:
        retryable = status >= 500 or status in (408, 429)
        raise FetchFailed(
            f"{response.request.url} answered {status}",
            retryable=retryable,
            status=status,
            headers=response.headers,
        )
    declared = response.headers.get("Content-Length", "")
    if not truncate and declared.isdigit() and int(declared) > policy.max_bytes:
        raise ResponseTooLarge(f"Content-Length {declared} is over the limit of {policy.max_bytes} bytes")


def _append_capped(body: bytearray, chunk: bytes, policy: EgressPolicy, *, truncate: bool) -> bool:
    """Add `chunk` to `body`; past the cap, raise (or, with `truncate`, cut and return True: stop)."""
    body += chunk
    if len(body) <= policy.max_bytes:
        return False
    if truncate:
        del body[policy.max_bytes :]
        return True
    raise ResponseTooLarge(f"response body is over the limit of {policy.max_bytes} bytes")


def _fetched(response: httpx.Response, body: bytearray) -> Fetched:
    return Fetched(
        status=response.status_code,
        content=bytes(body),
        content_type=response.headers.get("Content-Type"),
        final_url=str(response.url),
    )


@contextmanager
def _translate_errors() -> Iterator[None]:
    try:
        yield
    except httpx.TimeoutException as exc:
        raise FetchFailed(f"timed out: {exc!r}", retryable=True) from exc
    except httpx.TransportError as exc:
        # A certificate that does not match will not match on the next try either.
        raise FetchFailed(f"request failed: {exc!r}", retryable=not _is_certificate_error(exc)) from exc


def _is_certificate_error(exc: BaseException | None) -> bool:
    while exc is not None:
        if isinstance(exc, ssl.SSLCertVerificationError):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _timed_out(seconds: float) -> FetchFailed:
    return FetchFailed(f"not done within {seconds} s", retryable=True)


def _too_many_redirects(url: str, policy: EgressPolicy) -> FetchFailed:
    return FetchFailed(f"more than {policy.max_redirects} redirects from {url}", retryable=False)
