"""netguard against real local HTTP servers: refusals must happen before any connection is made.

Two servers share one port: the "victim" on 127.0.0.1 (never allow-listed; every refusal test asserts
it accepted no connection) and the "peer" on 127.0.0.2, allow-listed as exactly 127.0.0.2/32 so it
plays the public server (Linux routes all of 127/8 to lo). Host names are faked only by replacing
`socket.getaddrinfo` for names ending in `.test`; everything else resolves for real.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from imgpipe.imaging.errors import ErrorCode, PipelineError
from imgpipe.netguard import (
    AsyncGuardedClient,
    EgressPolicy,
    EgressRefused,
    FetchFailed,
    GuardedClient,
    ResponseTooLarge,
    fetch,
    parse_networks,
)

pytestmark = pytest.mark.unit

VICTIM_HOST = "127.0.0.1"
PEER_HOST = "127.0.0.2"
POLICY = EgressPolicy(allow_networks=(ip_network(f"{PEER_HOST}/32"),), connect_timeout=2.0, total_timeout=5.0)
BODY = b"\x89PNG pretend image"


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], release: threading.Event) -> None:
        self.accepted = 0
        self.hosts: list[str] = []
        self.posted: list[bytes] = []
        self.release = release
        super().__init__(address, Handler)

    def get_request(self) -> tuple[Any, Any]:
        connection = super().get_request()
        self.accepted += 1
        return connection

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients here hang up on purpose (caps, timeouts); keep the test output quiet."""

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class Handler(BaseHTTPRequestHandler):
    server: Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: C901 (a test server answering each trick path)
        self.server.hosts.append(self.headers.get("Host", ""))
        url = urlsplit(self.path)
        query = {key: values[0] for key, values in parse_qs(url.query).items()}
        size = int(query.get("n", "0"))
        try:
            if url.path == "/ok":
                self._reply(200, BODY, "image/png")
            elif url.path == "/host":
                self._reply(200, self.headers.get("Host", "").encode(), "text/plain")
            elif url.path.startswith("/status/"):
                self._reply(int(url.path.rsplit("/", 1)[1]), b"", "text/plain")
            elif url.path == "/redirect":
                self._redirect(int(query.get("status", "302")), query.get("to"))
            elif url.path == "/loop":
                self._redirect(302, "/loop")
            elif url.path == "/big":  # declares its length
                self._reply(200, b"x" * size, "image/png")
            elif url.path == "/stream":  # HTTP/1.0, no Content-Length: the body ends when the socket closes
                self.send_response(200)
                self.end_headers()
                for _ in range(size // 100):
                    self.wfile.write(b"x" * 100)
            elif url.path == "/chunked":
                self.protocol_version = "HTTP/1.1"
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("Connection", "close")
                self.end_headers()
                for _ in range(size // 100):
                    self.wfile.write(b"64\r\n" + b"x" * 100 + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
            elif url.path == "/stall":  # accepts, then says nothing until the test ends
                self.server.release.wait(30)
            elif url.path == "/stall-body":  # headers and part of the body, then nothing
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                self.wfile.write(b"x" * 10)
                self.wfile.flush()
                self.server.release.wait(30)
            else:
                self._reply(404, b"", "text/plain")
        except OSError:
            pass  # the client hung up

    def do_POST(self) -> None:
        self.server.hosts.append(self.headers.get("Host", ""))
        self.server.posted.append(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        url = urlsplit(self.path)
        if url.path == "/hook":
            self._reply(200, b"thanks", "text/plain")
        elif url.path == "/big":
            self._reply(200, b"y" * 5000, "text/plain")
        elif url.path == "/redirect":
            self._redirect(307, f"http://{VICTIM_HOST}:{self.server.port}/hook")
        else:
            self._reply(500, b"", "text/plain")

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, status: int, location: str | None) -> None:
        self.send_response(status)
        if location is not None:
            self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()


@dataclass
class Servers:
    victim: Server
    peer: Server

    @property
    def port(self) -> int:
        return self.victim.port

    def peer_url(self, path: str) -> str:
        return f"http://{PEER_HOST}:{self.port}{path}"

    def victim_url(self, path: str) -> str:
        return f"http://{VICTIM_HOST}:{self.port}{path}"


def serve(server: Server) -> Server:
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    return server


def stop(server: Server) -> None:
    server.release.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def servers() -> Iterator[Servers]:
    """Victim and peer on the same port, so a rebound name reaches either with one URL."""
    release = threading.Event()
    for _ in range(20):
        victim = Server((VICTIM_HOST, 0), release)
        try:
            peer = Server((PEER_HOST, victim.port), release)
        except OSError:
            victim.server_close()
            continue
        break
    else:
        pytest.fail("no port free on both 127.0.0.1 and 127.0.0.2")
    pair = Servers(serve(victim), serve(peer))
    yield pair
    stop(peer)
    stop(victim)


Answers = dict[str, list[list[str]]]


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> Callable[[Answers], list[str]]:
    """Answer `.test` names from a script (one list of addresses per call; the last one repeats)."""
    real_getaddrinfo = socket.getaddrinfo

    def install(answers: Answers) -> list[str]:
        asked: list[str] = []

        def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Sequence[Any]:
            name = host.decode() if isinstance(host, bytes) else host
            if name not in answers:
                return real_getaddrinfo(host, port, *args, **kwargs)
            asked.append(name)
            script = answers[name]
            addresses = script[min(asked.count(name), len(script)) - 1]
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, int(port))) for a in addresses]

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
        return asked

    return install


# --- the address check, no network ----------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.0.0.1",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "169.254.170.2",
        "100.64.0.1",
        "100.100.100.200",
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "192.0.2.1",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "fec0::1",
        "fd00:ec2::254",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "::7f00:1",
        "2002:7f00:1::1",
        "64:ff9b::a00:1",
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert not EgressPolicy().address_allowed(ip_address(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert EgressPolicy().address_allowed(ip_address(address))


def test_allow_list_admits_private_ranges_but_metadata_only_by_exact_address() -> None:
    broad = EgressPolicy.from_settings(allow_networks="169.254.0.0/16, 100.64.0.0/10, fd00::/8, 10.1.0.0/16")
    assert broad.address_allowed(ip_address("10.1.2.3"))
    assert not broad.address_allowed(ip_address("10.2.0.1"))
    assert broad.address_allowed(ip_address("169.254.1.1"))
    for metadata in ("169.254.169.254", "100.100.100.200", "fd00:ec2::254"):
        assert not broad.address_allowed(ip_address(metadata))
    exact = EgressPolicy.from_settings(allow_networks="169.254.169.254/32")
    assert exact.address_allowed(ip_address("169.254.169.254"))
    assert not exact.address_allowed(ip_address("169.254.170.2"))


def test_ipv4_mapped_addresses_are_judged_as_ipv4() -> None:
    policy = EgressPolicy.from_settings(allow_networks="127.0.0.2")
    assert policy.address_allowed(ip_address("::ffff:127.0.0.2"))
    assert not policy.address_allowed(ip_address("::ffff:127.0.0.1"))


def test_settings_strings() -> None:
    policy = EgressPolicy.from_settings(allow_networks="10.1.0.0/16,127.0.0.1/32", allowed_ports="80, 443")
    assert policy.allow_networks == (ip_network("10.1.0.0/16"), ip_network("127.0.0.1/32"))
    assert policy.allowed_ports == (80, 443)
    assert EgressPolicy.from_settings().allow_networks == ()
    assert EgressPolicy.from_settings().allowed_ports is None
    for bad in ("10.1.0.1/16", "nonsense", "10.0.0.0/33"):
        with pytest.raises(ValueError, match="allow list"):
            parse_networks(bad)
    with pytest.raises(ValueError, match="port"):
        EgressPolicy.from_settings(allowed_ports="http")
    with pytest.raises(ValueError):
        EgressPolicy(allowed_schemes=("http", "file"))


def test_errors_carry_pipeline_codes() -> None:
    assert issubclass(EgressRefused, PipelineError)
    assert EgressRefused("x").code == ErrorCode.FETCH_FAILED
    assert not EgressRefused("x").retryable
    assert FetchFailed("x", retryable=True).code == "fetch_failed"
    assert ResponseTooLarge("x").code == "image_too_large"
    assert not ResponseTooLarge("x").retryable


# --- refusals over real sockets -------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        VICTIM_HOST,
        "localhost",
        "0.0.0.0",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "2130706433",  # 127.0.0.1 as one number: resolves, and the answer is checked
        "127.1",
        "169.254.169.254",
        "10.0.0.1",
    ],
)
def test_private_destinations_are_refused_before_connecting(servers: Servers, host: str) -> None:
    with pytest.raises(EgressRefused):
        fetch(f"http://{host}:{servers.port}/ok", POLICY)
    assert servers.victim.accepted == 0
    assert servers.peer.accepted == 0


def test_allow_listed_peer_is_fetched(servers: Servers) -> None:
    got = fetch(servers.peer_url("/ok"), POLICY)
    assert (got.status, got.content, got.content_type) == (200, BODY, "image/png")
    assert got.final_url == servers.peer_url("/ok")
    assert servers.peer.accepted == 1


def test_connection_goes_to_the_checked_address_with_the_original_host(
    servers: Servers, fake_dns: Callable[[Answers], list[str]]
) -> None:
    fake_dns({"images.test": [[PEER_HOST]]})
    got = fetch(f"http://images.test:{servers.port}/host", POLICY)
    assert got.content == f"images.test:{servers.port}".encode()
    assert got.final_url == f"http://images.test:{servers.port}/host"


def test_dns_rebinding_cannot_move_the_connection(
    servers: Servers, fake_dns: Callable[[Answers], list[str]]
) -> None:
    url = f"http://rebind.test:{servers.port}/host"
    # Control: a client that checks, then lets the HTTP library resolve again, lands on the victim.
    fake_dns({"rebind.test": [[PEER_HOST], [VICTIM_HOST]]})
    checked = socket.getaddrinfo("rebind.test", servers.port)[0][4][0]
    assert POLICY.address_allowed(ip_address(checked))
    httpx.get(url, trust_env=False)
    assert servers.victim.accepted == 1
    servers.victim.accepted = 0

    asked = fake_dns({"rebind.test": [[PEER_HOST], [VICTIM_HOST]]})
    got = fetch(url, POLICY)
    assert got.content == f"rebind.test:{servers.port}".encode()
    assert asked == ["rebind.test"]  # resolved once; the connection used that answer
    assert servers.peer.accepted == 1
    assert servers.victim.accepted == 0


def test_every_resolved_address_must_pass(servers: Servers, fake_dns: Callable[[Answers], list[str]]) -> None:
    fake_dns({"mixed.test": [[PEER_HOST, VICTIM_HOST]]})
    with pytest.raises(EgressRefused, match=VICTIM_HOST):
        fetch(f"http://mixed.test:{servers.port}/ok", POLICY)
    assert servers.peer.accepted == 0
    assert servers.victim.accepted == 0


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_to_a_private_address_is_refused(servers: Servers, status: int) -> None:
    url = servers.peer_url(f"/redirect?status={status}&to={servers.victim_url('/ok')}")
    with pytest.raises(EgressRefused):
        fetch(url, POLICY)
    assert servers.peer.accepted == 1
    assert servers.victim.accepted == 0


def test_redirect_to_a_name_of_a_private_address_is_refused(servers: Servers) -> None:
    with pytest.raises(EgressRefused):
        fetch(servers.peer_url(f"/redirect?to=http://localhost:{servers.port}/ok"), POLICY)
    assert servers.victim.accepted == 0


@pytest.mark.parametrize("target", ["ftp://example.com/x.png", "file:///etc/passwd", "gopher://x/"])
def test_redirect_to_another_scheme_is_refused(servers: Servers, target: str) -> None:
    with pytest.raises(EgressRefused, match="scheme"):
        fetch(servers.peer_url(f"/redirect?to={target}"), POLICY)


def test_allowed_redirects_are_followed(servers: Servers) -> None:
    got = fetch(servers.peer_url("/redirect?to=/ok"), POLICY)
    assert got.content == BODY
    assert got.final_url == servers.peer_url("/ok")
    assert servers.peer.accepted == 2


def test_too_many_redirects(servers: Servers) -> None:
    with pytest.raises(FetchFailed, match="redirects") as caught:
        fetch(servers.peer_url("/loop"), POLICY)
    assert not caught.value.retryable
    assert servers.peer.accepted == POLICY.max_redirects + 1
    with pytest.raises(FetchFailed, match="redirects"):
        fetch(servers.peer_url("/redirect?to=/ok"), replace(POLICY, max_redirects=0))


def test_redirect_without_location(servers: Servers) -> None:
    with pytest.raises(FetchFailed, match="Location") as caught:
        fetch(servers.peer_url("/redirect"), POLICY)
    assert not caught.value.retryable


def test_scheme_and_port_policy(servers: Servers) -> None:
    with pytest.raises(EgressRefused, match="scheme"):
        fetch(f"ftp://{PEER_HOST}:{servers.port}/ok", POLICY)
    with pytest.raises(EgressRefused, match="port"):
        fetch(servers.peer_url("/ok"), replace(POLICY, allowed_ports=(443,)))
    with pytest.raises(EgressRefused, match="port"):  # would wrap around to another port
        fetch(f"http://{PEER_HOST}:{servers.port + 65536}/ok", POLICY)
    with pytest.raises(EgressRefused, match="invalid URL"):
        fetch("http://example.com:port/", POLICY)
    assert servers.peer.accepted == 0


# --- status, size and time ------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "retryable"), [(404, False), (403, False), (503, True), (429, True)])
def test_status_errors(servers: Servers, status: int, retryable: bool) -> None:
    with pytest.raises(FetchFailed) as caught:
        fetch(servers.peer_url(f"/status/{status}"), POLICY)
    assert caught.value.retryable is retryable
    assert caught.value.status == status
    assert caught.value.code == "fetch_failed"


def test_connection_refused_is_retryable() -> None:
    with socket.socket() as unused:
        unused.bind((PEER_HOST, 0))
        port = unused.getsockname()[1]
    with pytest.raises(FetchFailed) as caught:
        fetch(f"http://{PEER_HOST}:{port}/", POLICY)
    assert caught.value.retryable


@pytest.mark.parametrize("path", ["/big", "/stream", "/chunked"])
def test_body_over_the_byte_cap(servers: Servers, path: str) -> None:
    policy = replace(POLICY, max_bytes=1000)
    with pytest.raises(ResponseTooLarge):
        fetch(servers.peer_url(f"{path}?n=5000"), policy)
    assert len(fetch(servers.peer_url(f"{path}?n=1000"), policy).content) == 1000


def test_declared_length_over_the_cap_is_refused_before_reading(servers: Servers) -> None:
    with pytest.raises(ResponseTooLarge, match="Content-Length"):
        fetch(servers.peer_url("/big?n=5000"), replace(POLICY, max_bytes=1000))


@pytest.mark.parametrize("path", ["/stall", "/stall-body"])
def test_total_time_cap(servers: Servers, path: str) -> None:
    started = time.monotonic()
    with pytest.raises(FetchFailed) as caught:
        fetch(servers.peer_url(path), replace(POLICY, total_timeout=0.5))
    assert caught.value.retryable
    assert time.monotonic() - started < 2.5


def test_client_is_reusable(servers: Servers) -> None:
    with GuardedClient(POLICY) as client:
        assert client.get(servers.peer_url("/ok")).content == BODY
        with pytest.raises(EgressRefused):
            client.get(servers.victim_url("/ok"))
        assert client.get(servers.peer_url("/host")).status == 200
    assert servers.victim.accepted == 0


# --- https: SNI and certificate checks use the original host name ---------------------------------


@pytest.fixture
def tls_peer(tmp_path: Path) -> Iterator[tuple[Server, list[str | None], ssl.SSLContext]]:
    """An https server on 127.0.0.2 with a self-signed certificate for imgpipe.test only (no IP SAN)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to make a certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    options = "-x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=imgpipe.test"
    subprocess.run(
        [
            openssl,
            "req",
            *options.split(),
            "-addext",
            "subjectAltName=DNS:imgpipe.test",
            "-keyout",
            key,
            "-out",
            cert,
        ],
        check=True,
        capture_output=True,
    )
    sni: list[str | None] = []
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)

    def record_sni(_sock: ssl.SSLObject, name: str | None, _context: ssl.SSLContext) -> None:
        sni.append(name)

    server_context.sni_callback = record_sni
    server = Server((PEER_HOST, 0), threading.Event())
    server.socket = server_context.wrap_socket(server.socket, server_side=True)
    serve(server)
    yield server, sni, ssl.create_default_context(cafile=str(cert))
    stop(server)


def test_https_sends_and_verifies_the_original_host_name(
    tls_peer: tuple[Server, list[str | None], ssl.SSLContext], fake_dns: Callable[[Answers], list[str]]
) -> None:
    server, sni, trust = tls_peer
    fake_dns({"imgpipe.test": [[PEER_HOST]], "other.test": [[PEER_HOST]]})

    got = fetch(f"https://imgpipe.test:{server.port}/host", POLICY, verify=trust)
    assert got.content == f"imgpipe.test:{server.port}".encode()
    assert sni == ["imgpipe.test"]

    # The certificate names imgpipe.test only: another name on the same address fails verification,
    with pytest.raises(FetchFailed, match="CERTIFICATE_VERIFY_FAILED") as caught:
        fetch(f"https://other.test:{server.port}/host", POLICY, verify=trust)
    assert not caught.value.retryable
    assert sni[-1] == "other.test"
    # and so does the bare address, so the success above was checked against the name, not the IP.
    with pytest.raises(FetchFailed, match="CERTIFICATE_VERIFY_FAILED"):
        fetch(f"https://{PEER_HOST}:{server.port}/host", POLICY, verify=trust)
    assert server.hosts == [f"imgpipe.test:{server.port}"]


# --- async ----------------------------------------------------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_async_get_and_refusals(servers: Servers) -> None:
    async with AsyncGuardedClient(POLICY) as client:
        assert (await client.get(servers.peer_url("/redirect?to=/ok"))).content == BODY
        for url in (servers.victim_url("/ok"), f"http://localhost:{servers.port}/ok"):
            with pytest.raises(EgressRefused):
                await client.get(url)
        with pytest.raises(EgressRefused):
            await client.get(servers.peer_url(f"/redirect?to={servers.victim_url('/ok')}"))
        with pytest.raises(ResponseTooLarge):
            await AsyncGuardedClient(replace(POLICY, max_bytes=1000)).get(servers.peer_url("/chunked?n=5000"))
    assert servers.victim.accepted == 0


@pytest.mark.anyio
async def test_async_post(servers: Servers, fake_dns: Callable[[Answers], list[str]]) -> None:
    fake_dns({"hooks.test": [[PEER_HOST], [VICTIM_HOST]]})
    async with AsyncGuardedClient(replace(POLICY, max_bytes=100)) as client:
        got = await client.post(
            f"http://hooks.test:{servers.port}/hook",
            content=b'{"task": 1}',
            headers={"Content-Type": "application/json"},
        )
        assert (got.status, got.content) == (200, b"thanks")
        assert servers.peer.posted == [b'{"task": 1}']
        assert servers.peer.hosts == [f"hooks.test:{servers.port}"]

        big = await client.post(servers.peer_url("/big"), content=b"{}")
        assert big.content == b"y" * 100  # kept up to the cap: the hook was delivered

        with pytest.raises(EgressRefused, match="redirects are refused"):
            await client.post(servers.peer_url("/redirect"), content=b"{}")
        with pytest.raises(FetchFailed) as caught:
            await client.post(servers.peer_url("/fail"), content=b"{}")
        assert caught.value.retryable
    assert servers.victim.accepted == 0


@pytest.mark.anyio
async def test_async_dns_rebinding(servers: Servers, fake_dns: Callable[[Answers], list[str]]) -> None:
    asked = fake_dns({"rebind.test": [[PEER_HOST], [VICTIM_HOST]]})
    async with AsyncGuardedClient(POLICY) as client:
        got = await client.get(f"http://rebind.test:{servers.port}/host")
    assert got.content == f"rebind.test:{servers.port}".encode()
    assert asked == ["rebind.test"]
    assert servers.victim.accepted == 0


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/stall", "/stall-body"])
async def test_async_total_time_cap(servers: Servers, path: str) -> None:
    started = time.monotonic()
    async with AsyncGuardedClient(replace(POLICY, total_timeout=0.5)) as client:
        with pytest.raises(FetchFailed) as caught:
            await client.get(servers.peer_url(path))
    assert caught.value.retryable
    assert time.monotonic() - started < 1.5
