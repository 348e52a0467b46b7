"""WebhookSender against real loopback receivers: verdicts, Retry-After, per-call timeouts, isolation of
a hanging receiver, and SSRF refusals before any connection. Needs no Kafka."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from imgpipe.callback.payloads import callback_item, encode_request
from imgpipe.callback.sender import MAX_RETRY_AFTER_SECONDS, SendResult, WebhookSender, parse_retry_after
from imgpipe.callback.signing import WebhookSigner, webhook_id_for
from imgpipe.netguard import EgressPolicy, parse_networks
from imgpipe.v1 import callback_pb2, result_pb2, task_pb2

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
POLICY = EgressPolicy(allow_networks=parse_networks(f"{HOST}/32"))
BODY = b'{"type":"task.failed"}'
HEADERS = {"content-type": "application/json"}


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_seconds: float = 0.0  # answer only after this long


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes


class Receiver(ThreadingHTTPServer):
    """Answers each path with its `Reply`; `/hang` accepts the request and never answers."""

    daemon_threads = True

    def __init__(self, routes: dict[str, Reply]) -> None:
        self.routes = routes
        self.accepted = 0
        self.received: list[Received] = []
        self.hanging = threading.Event()  # set when a /hang request has arrived
        self.release = threading.Event()  # set at teardown: let hanging handlers end
        super().__init__((HOST, 0), _Handler)

    def get_request(self) -> tuple[Any, Any]:
        connection = super().get_request()
        self.accepted += 1
        return connection

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients hang up on purpose here (timeouts); keep the output quiet."""

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.server_address[1]}{path}"


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.received.append(
            Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        )
        if self.path == "/hang":
            self.server.hanging.set()
            self.server.release.wait(60)
            return
        reply = self.server.routes.get(self.path, Reply(404))
        if reply.delay_seconds:
            self.server.release.wait(reply.delay_seconds)
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    """Two independent receivers (own sockets and threads); routes are set per test."""
    started = [Receiver({}), Receiver({})]
    for server in started:
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    yield started
    for server in started:
        server.release.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def receiver(receivers: list[Receiver]) -> Receiver:
    return receivers[0]


@pytest.fixture
async def sender() -> AsyncIterator[WebhookSender]:
    async with WebhookSender(POLICY) as client:
        yield client


def assert_result(result: SendResult, verdict: callback_pb2.DeliveryVerdict.ValueType, status: int) -> None:
    assert (callback_pb2.DeliveryVerdict.Name(result.verdict), result.status_code) == (
        callback_pb2.DeliveryVerdict.Name(verdict),
        status,
    ), result.error


@pytest.mark.anyio
async def test_2xx_is_delivered_with_a_verifiable_signature(
    receiver: Receiver, sender: WebhookSender
) -> None:
    receiver.routes["/hook"] = Reply(200)
    receiver.routes["/accepted"] = Reply(202)
    result = result_pb2.TaskResult(task_id="t-1", tenant_id="acme", state=task_pb2.TASK_STATE_CANCELED)
    body = encode_request([callback_item(result, result_url=None, inline_png=None)], batched=False)
    signer = WebhookSigner(["master-key"])
    headers = signer.headers("acme", webhook_id_for(["t-1"]), body, int(time.time()))

    sent = await sender.send(receiver.url("/hook"), body, headers, 5.0)
    assert_result(sent, callback_pb2.DELIVERY_VERDICT_DELIVERED, 200)
    assert sent.error == ""
    assert sent.retry_after_seconds is None
    assert 0 <= sent.latency_ms < 5000

    [got] = receiver.received
    assert got.body == body
    assert got.headers["content-type"] == "application/json"
    payload = Webhook(signer.secrets_for("acme")[0]).verify(got.body, got.headers)
    assert payload["task_id"] == "t-1"

    accepted = await sender.send(receiver.url("/accepted"), body, headers, 5.0)
    assert_result(accepted, callback_pb2.DELIVERY_VERDICT_DELIVERED, 202)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("reply", "verdict", "retry_after"),
    [
        (Reply(500), callback_pb2.DELIVERY_VERDICT_RETRY, None),
        (Reply(400), callback_pb2.DELIVERY_VERDICT_RETRY, None),
        (Reply(404), callback_pb2.DELIVERY_VERDICT_RETRY, None),
        (Reply(429, {"Retry-After": "7"}), callback_pb2.DELIVERY_VERDICT_RETRY, 7.0),
        (Reply(429), callback_pb2.DELIVERY_VERDICT_RETRY, None),
        (Reply(503, {"Retry-After": "86400"}), callback_pb2.DELIVERY_VERDICT_RETRY, MAX_RETRY_AFTER_SECONDS),
        (Reply(500, {"Retry-After": "7"}), callback_pb2.DELIVERY_VERDICT_RETRY, None),  # only 429 and 503
        (Reply(410), callback_pb2.DELIVERY_VERDICT_GONE, None),
    ],
    ids=lambda value: str(value.status) + str(dict(value.headers)) if isinstance(value, Reply) else "",
)
async def test_status_verdicts(
    receiver: Receiver,
    sender: WebhookSender,
    reply: Reply,
    verdict: callback_pb2.DeliveryVerdict.ValueType,
    retry_after: float | None,
) -> None:
    receiver.routes["/hook"] = reply
    sent = await sender.send(receiver.url("/hook"), BODY, HEADERS, 5.0)
    assert_result(sent, verdict, reply.status)
    assert sent.retry_after_seconds == retry_after
    assert str(reply.status) in sent.error
    assert receiver.received[0].body == BODY


@pytest.mark.anyio
async def test_503_with_an_http_date(receiver: Receiver, sender: WebhookSender) -> None:
    when = datetime.now(UTC) + timedelta(seconds=120)
    receiver.routes["/hook"] = Reply(503, {"Retry-After": format_datetime(when, usegmt=True)})
    sent = await sender.send(receiver.url("/hook"), BODY, HEADERS, 5.0)
    assert_result(sent, callback_pb2.DELIVERY_VERDICT_RETRY, 503)
    assert sent.retry_after_seconds is not None
    assert 100.0 < sent.retry_after_seconds <= 120.0  # the date has whole seconds


def test_parse_retry_after() -> None:
    now = datetime(2026, 11, 22, 8, 0, 0, tzinfo=UTC).timestamp()
    assert parse_retry_after("7", now=now) == 7.0
    assert parse_retry_after(" 0 ", now=now) == 0.0
    assert parse_retry_after("7200", now=now) == MAX_RETRY_AFTER_SECONDS
    assert parse_retry_after("Sun, 22 Nov 2026 08:01:30 GMT", now=now) == 90.0
    assert parse_retry_after("Sunday, 22-Nov-26 08:01:30 GMT", now=now) == 90.0  # RFC 850 form
    assert parse_retry_after("Sun, 22 Nov 2026 07:00:00 GMT", now=now) == 0.0  # in the past: now
    assert parse_retry_after("Sun, 22 Nov 2027 08:00:00 GMT", now=now) == MAX_RETRY_AFTER_SECONDS
    for unreadable in (None, "", "soon", "-5", "nan", "Sun, 99 Nov 2026 08:01:30 GMT"):
        assert parse_retry_after(unreadable, now=now) is None


@pytest.mark.anyio
async def test_a_receiver_that_never_answers_costs_at_most_the_timeout(
    receiver: Receiver, sender: WebhookSender
) -> None:
    timeout = 1.0
    started = time.monotonic()
    sent = await sender.send(receiver.url("/hang"), BODY, HEADERS, timeout)
    elapsed = time.monotonic() - started
    assert receiver.hanging.is_set()  # it got the request and held it
    assert_result(sent, callback_pb2.DELIVERY_VERDICT_RETRY, 0)
    assert "1.0 s" in sent.error
    assert timeout <= elapsed < timeout + 1.0
    assert timeout * 1000 - 50 <= sent.latency_ms < (timeout + 1.0) * 1000


@pytest.mark.anyio
async def test_a_hanging_receiver_does_not_delay_another(
    receivers: list[Receiver], sender: WebhookSender
) -> None:
    hanging, fast = receivers
    fast.routes["/hook"] = Reply(200)
    timeout = 3.0
    finished: list[str] = []
    results: dict[str, SendResult] = {}

    async def send(name: str, url: str) -> None:
        results[name] = await sender.send(url, BODY, HEADERS, timeout)
        finished.append(name)

    async with anyio.create_task_group() as group:
        group.start_soon(send, "hanging", hanging.url("/hang"))
        # The hanging request is in flight (the receiver holds it) before the other one starts.
        assert await anyio.to_thread.run_sync(hanging.hanging.wait, 10.0)
        group.start_soon(send, "fast", fast.url("/hook"))
        # (The group waits for both.)

    assert finished == ["fast", "hanging"]
    assert_result(results["fast"], callback_pb2.DELIVERY_VERDICT_DELIVERED, 200)
    assert_result(results["hanging"], callback_pb2.DELIVERY_VERDICT_RETRY, 0)
    assert results["fast"].latency_ms < results["hanging"].latency_ms


@pytest.mark.anyio
async def test_the_call_timeout_replaces_the_policy_total(receiver: Receiver) -> None:
    receiver.routes["/slow"] = Reply(200, delay_seconds=0.5)
    async with WebhookSender(replace(POLICY, total_timeout=0.2)) as short_policy:
        sent = await short_policy.send(receiver.url("/slow"), BODY, HEADERS, 5.0)
    assert_result(sent, callback_pb2.DELIVERY_VERDICT_DELIVERED, 200)


@pytest.mark.anyio
async def test_refused_urls_never_connect(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    """Refusals happen before any connection: the inner httpx transport is never reached."""
    connects: list[str] = []
    real = httpx.AsyncHTTPTransport.handle_async_request

    async def watched(self: httpx.AsyncHTTPTransport, request: httpx.Request) -> httpx.Response:
        connects.append(str(request.url))
        return await real(self, request)

    monkeypatch.setattr(httpx.AsyncHTTPTransport, "handle_async_request", watched)
    receiver.routes["/hook"] = Reply(200)
    port = receiver.server_address[1]

    async with WebhookSender(POLICY) as allow_listed:
        sent = await allow_listed.send(f"http://10.0.0.1:{port}/hook", BODY, HEADERS, 2.0)
        assert_result(sent, callback_pb2.DELIVERY_VERDICT_REFUSED, 0)
        assert "10.0.0.1" in sent.error
        for url in ("file:///etc/passwd", "not a url"):
            assert_result(
                await allow_listed.send(url, BODY, HEADERS, 2.0), callback_pb2.DELIVERY_VERDICT_REFUSED, 0
            )
    async with WebhookSender(EgressPolicy()) as no_allow_list:
        for url in (f"http://localhost:{port}/hook", receiver.url("/hook")):
            sent = await no_allow_list.send(url, BODY, HEADERS, 2.0)
            assert_result(sent, callback_pb2.DELIVERY_VERDICT_REFUSED, 0)
            assert sent.error.startswith("refused: ")
    assert connects == []
    assert receiver.accepted == 0
    # Control: the watch does see a connection that is made.
    async with WebhookSender(POLICY) as allow_listed:
        sent = await allow_listed.send(receiver.url("/hook"), BODY, HEADERS, 2.0)
    assert_result(sent, callback_pb2.DELIVERY_VERDICT_DELIVERED, 200)
    assert len(connects) == receiver.accepted == 1


@pytest.mark.anyio
async def test_a_redirect_is_refused(receiver: Receiver, sender: WebhookSender) -> None:
    receiver.routes["/moved"] = Reply(307, {"Location": receiver.url("/hook")})
    sent = await sender.send(receiver.url("/moved"), BODY, HEADERS, 5.0)
    assert_result(sent, callback_pb2.DELIVERY_VERDICT_REFUSED, 0)
    assert [r.path for r in receiver.received] == ["/moved"]


@pytest.mark.anyio
async def test_connection_refused_is_retry(sender: WebhookSender) -> None:
    with socket.socket() as unused:
        unused.bind((HOST, 0))
        port = unused.getsockname()[1]
    sent = await sender.send(f"http://{HOST}:{port}/hook", BODY, HEADERS, 5.0)
    assert_result(sent, callback_pb2.DELIVERY_VERDICT_RETRY, 0)
    assert sent.error


@pytest.mark.anyio
async def test_a_host_that_does_not_exist_is_permanent(sender: WebhookSender) -> None:
    # .invalid never resolves (RFC 2606): the next try cannot do better, so no retries (docs/egress.md).
    sent = await sender.send("https://no-such-receiver.invalid/hook", BODY, HEADERS, 5.0)
    assert_result(sent, callback_pb2.DELIVERY_VERDICT_REFUSED, 0)
    assert "cannot resolve no-such-receiver.invalid" in sent.error


@pytest.mark.anyio
async def test_invalid_timeout(sender: WebhookSender) -> None:
    with pytest.raises(ValueError):
        await sender.send("http://127.0.0.1:9/", BODY, HEADERS, 0.0)
