"""ResilientHttpClient against scripted in-process transports (httpx.MockTransport): which failures are
retried, how long it waits, when the breaker opens, and what each failure becomes."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from imgpipe.backends.resilience import HttpBackendConfig, ResilientHttpClient
from imgpipe.imaging.errors import ModelError
from imgpipe.localstack.waiting import wait_until

pytestmark = pytest.mark.unit

Handler = Callable[[httpx.Request], httpx.Response]


class Script:
    """A transport answering from a list (the last answer repeats) and recording every request."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def _client(handler: Handler, sleeps: list[float] | None = None, **config: Any) -> ResilientHttpClient:
    settings: dict[str, Any] = {"base_url": "http://model.test/prefix", "model": "m", "backoff_seconds": 0.2}
    settings.update(config)
    recorded = sleeps if sleeps is not None else []
    return ResilientHttpClient(
        HttpBackendConfig(**settings),
        name="test",
        transport=httpx.MockTransport(handler),
        sleep=recorded.append,
    )


def _ok() -> httpx.Response:
    return httpx.Response(200, json={"ok": True})


def test_server_errors_are_retried_with_jittered_exponential_backoff() -> None:
    script = Script(httpx.Response(500), httpx.Response(502), httpx.Response(503), _ok())
    sleeps: list[float] = []
    client = _client(script, sleeps, max_retries=3, backoff_seconds=0.2, max_backoff_seconds=10)
    assert client.request("POST", "/v2/x").json() == {"ok": True}
    assert len(script.requests) == 4
    assert len(sleeps) == 3
    for attempt, slept in enumerate(sleeps, start=1):
        assert 0 <= slept <= 0.2 * 2 ** (attempt - 1)
    assert str(script.requests[0].url) == "http://model.test/prefix/v2/x"  # the base's path prefix is kept


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ConnectError("refused"),
        httpx.ConnectTimeout("slow connect"),
        httpx.ReadTimeout("slow read"),
        httpx.RemoteProtocolError("server hung up"),
        httpx.ReadError("reset"),
    ],
)
def test_connection_failures_and_timeouts_are_retried_then_retryable(failure: Exception) -> None:
    script = Script(failure)
    client = _client(script, max_retries=2)
    with pytest.raises(ModelError) as exc_info:
        client.request("GET", "/x")
    assert exc_info.value.retryable is True
    assert type(failure).__name__ in exc_info.value.message
    assert "after 3 attempt(s)" in exc_info.value.message
    assert len(script.requests) == 3


def test_retry_after_is_honoured_exactly() -> None:
    script = Script(httpx.Response(429, headers={"Retry-After": "2"}), _ok())
    sleeps: list[float] = []
    client = _client(script, sleeps, backoff_seconds=0.01)
    client.request("GET", "/x")
    assert sleeps == [2.0]
    assert len(script.requests) == 2


def test_retry_after_over_the_cap_gives_up_at_once_but_stays_retryable() -> None:
    script = Script(httpx.Response(503, headers={"Retry-After": "120"}), _ok())
    sleeps: list[float] = []
    client = _client(script, sleeps, retry_after_cap_seconds=10)
    with pytest.raises(ModelError) as exc_info:
        client.request("GET", "/x")
    assert exc_info.value.retryable is True
    assert "Retry-After 120 s" in exc_info.value.message
    assert sleeps == []
    assert len(script.requests) == 1


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
def test_client_errors_are_permanent_and_not_retried(status: int) -> None:
    script = Script(httpx.Response(status, json={"error": "bad input"}))
    client = _client(script)
    with pytest.raises(ModelError) as exc_info:
        client.request("POST", "/x")
    assert exc_info.value.retryable is False
    assert f"HTTP {status}" in exc_info.value.message
    assert "bad input" in exc_info.value.message
    assert len(script.requests) == 1


def test_redirects_are_not_followed_and_permanent() -> None:
    script = Script(httpx.Response(302, headers={"Location": "http://elsewhere/"}))
    with pytest.raises(ModelError) as exc_info:
        _client(script).request("GET", "/x")
    assert exc_info.value.retryable is False
    assert len(script.requests) == 1


def test_breaker_opens_after_consecutive_failures_and_then_fails_fast() -> None:
    script = Script(httpx.ConnectError("refused"))
    client = _client(script, max_retries=1, breaker_fail_max=3, breaker_reset_seconds=60)
    with pytest.raises(ModelError) as first:
        client.request("GET", "/x")  # 2 failures
    assert not client.circuit_open
    assert "circuit now open" not in first.value.message
    with pytest.raises(ModelError) as second:
        client.request("GET", "/x")  # the 3rd failure opens it: no 4th attempt
    assert client.circuit_open
    assert "circuit now open" in second.value.message
    assert len(script.requests) == 3
    for _ in range(5):
        with pytest.raises(ModelError) as fast:
            client.request("GET", "/x")
        assert fast.value.retryable is True
        assert "circuit open" in fast.value.message
    assert len(script.requests) == 3  # no request while open


def test_breaker_lets_a_trial_call_through_after_the_reset_timeout() -> None:
    script = Script(httpx.Response(500), _ok())
    client = _client(script, max_retries=0, breaker_fail_max=1, breaker_reset_seconds=0.2)
    with pytest.raises(ModelError):
        client.request("GET", "/x")
    assert client.circuit_open

    def trial_succeeds() -> bool:
        try:
            client.request("GET", "/x")
        except ModelError as exc:
            assert "circuit open" in exc.message  # failing fast until the reset timeout passes
            return False
        return True

    wait_until(trial_succeeds, timeout=10, what="the half-open trial call")
    assert client.breaker.current_state == "closed"
    assert len(script.requests) == 2


def test_client_errors_and_rate_limits_never_trip_the_breaker() -> None:
    script = Script(httpx.Response(404), httpx.Response(429, headers={"Retry-After": "999"}))
    client = _client(script, max_retries=0, breaker_fail_max=1)
    for _ in range(4):
        with pytest.raises(ModelError):
            client.request("GET", "/x")
    assert not client.circuit_open
    assert client.breaker.fail_counter == 0
    assert len(script.requests) == 4


def test_a_server_answer_resets_the_consecutive_failure_count() -> None:
    script = Script(httpx.Response(500), httpx.Response(400), httpx.Response(500), _ok())
    client = _client(script, max_retries=0, breaker_fail_max=2)
    for _ in range(3):
        with pytest.raises(ModelError):
            client.request("GET", "/x")
    assert client.breaker.fail_counter == 1  # 500, then 400 (reset), then 500
    assert not client.circuit_open


def test_malformed_urls_are_permanent() -> None:
    client = _client(Script(httpx.UnsupportedProtocol("no")))
    with pytest.raises(ModelError) as exc_info:
        client.request("GET", "/x")
    assert exc_info.value.retryable is False


def test_headers_carry_the_api_key_and_user_agent() -> None:
    script = Script(_ok())
    _client(script, api_key="sk-test").request("GET", "/x")
    (request,) = script.requests
    assert request.headers["Authorization"] == "Bearer sk-test"
    assert request.headers["User-Agent"].startswith("imgpipe")
    script = Script(_ok())
    _client(script).request("GET", "/x")
    assert "Authorization" not in script.requests[0].headers


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()  # never leave a blocked handler behind


def test_concurrency_is_bounded_and_waiting_for_a_slot_is_bounded(gate: threading.Event) -> None:
    entered = threading.Event()

    def blocking(request: httpx.Request) -> httpx.Response:
        entered.set()
        assert gate.wait(timeout=30)
        return _ok()

    client = _client(blocking, max_concurrency=1, acquire_timeout_seconds=0.05)
    holder = threading.Thread(target=client.request, args=("GET", "/x"))
    holder.start()
    assert entered.wait(timeout=10)
    with pytest.raises(ModelError) as exc_info:
        client.request("GET", "/x")
    assert exc_info.value.retryable is True
    assert "slots busy" in exc_info.value.message
    assert not client.circuit_open  # local saturation is not the server's failure
    gate.set()
    holder.join(timeout=10)
    assert client.request("GET", "/x").status_code == 200  # the slot came back
