"""httpx transports that connect only to checked addresses.

For each request: check the scheme and port, resolve the host once, refuse unless every resolved
address is allowed, then hand the inner httpx transport a copy of the request whose URL names the
first address instead of the host. The `Host` header keeps the original host, and for https the
`sni_hostname` request extension (honoured by httpcore) makes the TLS handshake send, and verify the
certificate against, the original host name. Since nothing resolves the name again, a DNS answer that
changes between check and connect (DNS rebinding) cannot move the connection.

Connections are not kept alive: a pooled https connection is keyed by address, and reusing it for
another host name on the same address would skip that name's certificate check.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Sequence
from ipaddress import ip_address
from typing import Final

import anyio
import httpx

from imgpipe.netguard.errors import EgressRefused, FetchFailed
from imgpipe.netguard.policy import EgressPolicy, IPAddress, unmap

DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_NO_KEEPALIVE: Final = httpx.Limits(max_keepalive_connections=0)


def check_url(url: httpx.URL, policy: EgressPolicy) -> None:
    """Refuse a scheme or port the policy does not allow (the address is checked on resolution)."""
    if url.scheme not in policy.allowed_schemes:
        raise EgressRefused(f"scheme {url.scheme!r} is not allowed: {url}")
    if not url.host:
        raise EgressRefused(f"no host in {url}")
    port = url.port or DEFAULT_PORTS[url.scheme]
    if not 0 < port < 65536:
        raise EgressRefused(f"port {port} is out of range: {url}")
    if policy.allowed_ports is not None and port not in policy.allowed_ports:
        raise EgressRefused(f"port {port} is not allowed: {url}")


def resolve(url: httpx.URL, policy: EgressPolicy) -> IPAddress:
    """The address to connect to for `url`, after checking every address the host resolves to."""
    host, port = _host_port(url)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise _unresolvable(host, exc) from exc
    return _choose(host, [str(info[4][0]) for info in infos], policy)


async def resolve_async(url: httpx.URL, policy: EgressPolicy) -> IPAddress:
    """`resolve` without blocking the event loop."""
    host, port = _host_port(url)
    try:
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise _unresolvable(host, exc) from exc
    return _choose(host, [str(info[4][0]) for info in infos], policy)


def pin(request: httpx.Request, address: IPAddress) -> httpx.Request:
    """A copy of `request` that connects to `address` but still speaks to the original host."""
    hostname = request.url.raw_host.decode("ascii")  # IDNA-encoded; IPv6 without brackets
    headers = request.headers.copy()
    headers["Host"] = request.url.netloc.decode("ascii")
    extensions = dict(request.extensions)
    if request.url.scheme == "https" and not _is_ip_literal(hostname):
        extensions["sni_hostname"] = hostname
    return httpx.Request(
        request.method,
        request.url.copy_with(host=str(address)),
        headers=headers,
        stream=request.stream,
        extensions=extensions,
    )


class GuardedTransport(httpx.BaseTransport):
    """Sync transport: check, resolve once, connect to the checked address."""

    def __init__(self, policy: EgressPolicy, *, verify: ssl.SSLContext | bool = True) -> None:
        self.policy = policy
        self._inner = httpx.HTTPTransport(verify=verify, limits=_NO_KEEPALIVE, retries=0)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        check_url(request.url, self.policy)
        address = resolve(request.url, self.policy)
        return self._inner.handle_request(pin(request, address))

    def close(self) -> None:
        self._inner.close()


class AsyncGuardedTransport(httpx.AsyncBaseTransport):
    """Async transport: check, resolve once, connect to the checked address."""

    def __init__(self, policy: EgressPolicy, *, verify: ssl.SSLContext | bool = True) -> None:
        self.policy = policy
        self._inner = httpx.AsyncHTTPTransport(verify=verify, limits=_NO_KEEPALIVE, retries=0)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        check_url(request.url, self.policy)
        address = await resolve_async(request.url, self.policy)
        return await self._inner.handle_async_request(pin(request, address))

    async def aclose(self) -> None:
        await self._inner.aclose()


def _host_port(url: httpx.URL) -> tuple[str, int]:
    return url.raw_host.decode("ascii"), url.port or DEFAULT_PORTS[url.scheme]


def _choose(host: str, sockaddr_hosts: Sequence[str], policy: EgressPolicy) -> IPAddress:
    """The first resolved address, if every one of them is allowed."""
    addresses = list(dict.fromkeys(unmap(ip_address(text)) for text in sockaddr_hosts))
    if not addresses:
        raise FetchFailed(f"{host} resolved to no address", retryable=False)
    for address in addresses:
        if not policy.address_allowed(address):
            raise EgressRefused(f"{host} resolves to {address}, which the egress policy refuses")
    return addresses[0]


def _unresolvable(host: str, exc: socket.gaierror) -> FetchFailed:
    # A name that does not exist will not exist on the next try; a resolver hiccup (EAI_AGAIN) may pass.
    return FetchFailed(f"cannot resolve {host}: {exc}", retryable=exc.errno == socket.EAI_AGAIN)


def _is_ip_literal(host: str) -> bool:
    try:
        ip_address(host)
    except ValueError:
        return False
    return True
