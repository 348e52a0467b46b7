"""Contract tests of the HTTP model backends over real sockets.

- Against `python -m imgpipe.modelserver` as a real subprocess: each backend gives what the local CPU
  backend gives on skimage's chelsea; killing the server turns calls into retryable errors and opens
  the breaker (then calls fail fast, without a request); a server restarted on the same port is used
  again once the breaker's reset timeout lets a trial call through.
- Against a scripted server in a thread: a 500 then 200 is retried; Retry-After is honoured; 4xx is
  permanent and leaves the breaker closed; malformed answers are permanent; concurrent calls run in
  parallel up to max_concurrency.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import skimage.data
from PIL import Image

from imgpipe.backends.oip_detect import OipPetDetector
from imgpipe.backends.openai_generate import OpenAIImagesStylizer
from imgpipe.backends.rembg_matte import RembgMatter
from imgpipe.backends.resilience import HttpBackendConfig
from imgpipe.imaging.detect import Box, Detection, HaarPetDetector, select_pet
from imgpipe.imaging.errors import ModelError
from imgpipe.imaging.generate import PillowStylizer
from imgpipe.imaging.matte import GrabCutMatter
from imgpipe.localstack.waiting import wait_until

pytestmark = pytest.mark.integration

API_KEY = "test-key"
DETECT_MODEL = "pet-detector"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ModelServer:
    """`python -m imgpipe.modelserver` in a subprocess, on a fixed port so it can be restarted there."""

    def __init__(self, port: int, log_path: Path, *extra: str) -> None:
        self.port = port
        self.log_path = log_path
        self.extra = extra
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "imgpipe.modelserver", "--port", str(self.port)),
                    *("--api-key", API_KEY, *self.extra),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until(self._ready, timeout=60, what=f"model server on port {self.port}")

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(
                f"model server exited ({self.process.returncode}):\n{self.log_path.read_text()}"
            )
        try:
            return httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        """SIGKILL: a crash, not a graceful stop."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def chelsea() -> Image.Image:
    return Image.fromarray(skimage.data.chelsea())  # type: ignore[no-untyped-call]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
    running = ModelServer(_free_port(), tmp_path_factory.mktemp("model-server") / "server.log")
    running.start()
    yield running
    running.kill()


def _config(url: str, model: str, **overrides: Any) -> HttpBackendConfig:
    settings: dict[str, Any] = {
        "base_url": url,
        "model": model,
        "timeout_seconds": 30,
        "connect_timeout_seconds": 2,
        "backoff_seconds": 0.01,
        "max_backoff_seconds": 0.05,
    }
    settings.update(overrides)
    return HttpBackendConfig(**settings)


class CountingTransport(httpx.HTTPTransport):
    """A real transport that counts the requests it sends (to show an open breaker sends none)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent += 1
        return super().handle_request(request)


def _alpha_mask(image: Image.Image) -> np.ndarray[Any, np.dtype[np.bool_]]:
    return np.asarray(image.getchannel("A")) > 127


# --- contract against the real model server --------------------------------------------------------------


def test_the_backends_accept_the_simulated_accelerators_answers(tmp_path: Path, chelsea: Image.Image) -> None:
    simulated = ModelServer(_free_port(), tmp_path / "server.log", "--simulate", "--service-time", "0.01")
    simulated.start()
    try:
        pet = select_pet(OipPetDetector(_config(simulated.url, DETECT_MODEL)).detect(chelsea))
        assert pet is not None and pet.support >= 2
        styled = OpenAIImagesStylizer(_config(simulated.url, "stylizer", api_key=API_KEY)).stylize(
            chelsea, "noir"
        )
        assert np.array_equal(np.asarray(styled), np.asarray(chelsea))  # handed back unchanged
        cut_out = RembgMatter(_config(simulated.url, "u2net")).matte(styled, hint=pet.box)
        assert (cut_out.mode, cut_out.size) == ("RGBA", chelsea.size)
        assert _alpha_mask(cut_out).all()
    finally:
        simulated.kill()


def test_detector_matches_the_local_cpu_backend(server: ModelServer, chelsea: Image.Image) -> None:
    detector = OipPetDetector(_config(server.url, DETECT_MODEL))
    assert detector.ready()
    assert detector.model_ready()
    remote = detector.detect(chelsea)
    assert remote == HaarPetDetector().detect(chelsea)
    pet = select_pet(remote)
    assert pet is not None and pet.support >= 2  # chelsea is found, through HTTP too
    detector.close()


def test_unknown_detect_model_is_permanent_and_leaves_the_breaker_closed(
    server: ModelServer, chelsea: Image.Image
) -> None:
    detector = OipPetDetector(_config(server.url, "no-such-model", breaker_fail_max=1))
    assert detector.ready()
    assert not detector.model_ready()
    with pytest.raises(ModelError) as exc_info:
        detector.detect(chelsea)
    assert exc_info.value.retryable is False
    assert "HTTP 404" in exc_info.value.message
    assert not detector.http.circuit_open


@pytest.mark.parametrize("prompt", ["pencil sketch", "watercolor, warm sunset", "a cat"])
def test_stylizer_matches_the_local_cpu_backend(
    server: ModelServer, chelsea: Image.Image, prompt: str
) -> None:
    stylizer = OpenAIImagesStylizer(_config(server.url, "stylizer", api_key=API_KEY))
    remote = stylizer.stylize(chelsea, prompt)
    local = PillowStylizer().stylize(chelsea, prompt)
    assert (remote.mode, remote.size) == (local.mode, local.size) == ("RGB", chelsea.size)
    assert np.array_equal(np.asarray(remote), np.asarray(local))  # PNG both ways: lossless


def test_stylizer_keeps_the_input_alpha(server: ModelServer, chelsea: Image.Image) -> None:
    with_alpha = chelsea.copy()
    alpha = Image.new("L", chelsea.size, 255)
    alpha.paste(0, (0, 0, 100, 100))
    with_alpha.putalpha(alpha)
    stylizer = OpenAIImagesStylizer(_config(server.url, "stylizer", api_key=API_KEY))
    remote = stylizer.stylize(with_alpha, "sepia")
    local = PillowStylizer().stylize(with_alpha, "sepia")
    assert remote.mode == local.mode == "RGBA"
    assert remote.getchannel("A").tobytes() == alpha.tobytes()
    assert np.array_equal(np.asarray(remote), np.asarray(local))


def test_stylizer_scales_a_server_sized_result_back_and_refuses_another_aspect(
    server: ModelServer, chelsea: Image.Image
) -> None:
    double = OpenAIImagesStylizer(_config(server.url, "stylizer", api_key=API_KEY), size="902x600")
    assert double.stylize(chelsea, "noir").size == chelsea.size
    square = OpenAIImagesStylizer(_config(server.url, "stylizer", api_key=API_KEY), size="512x512")
    with pytest.raises(ModelError) as exc_info:
        square.stylize(chelsea, "noir")
    assert exc_info.value.retryable is False
    assert "aspect ratio" in exc_info.value.message


def test_stylizer_with_a_wrong_api_key_is_permanent(server: ModelServer, chelsea: Image.Image) -> None:
    stylizer = OpenAIImagesStylizer(_config(server.url, "stylizer", api_key="wrong", breaker_fail_max=1))
    with pytest.raises(ModelError) as exc_info:
        stylizer.stylize(chelsea, "noir")
    assert exc_info.value.retryable is False
    assert "HTTP 401" in exc_info.value.message
    assert not stylizer.http.circuit_open


def test_matter_matches_the_local_cpu_backend(server: ModelServer, chelsea: Image.Image) -> None:
    pet = select_pet(HaarPetDetector().detect(chelsea))
    assert pet is not None
    matter = RembgMatter(_config(server.url, "u2net"))
    remote = matter.matte(chelsea, hint=pet.box)
    local = GrabCutMatter().matte(chelsea, hint=pet.box)
    assert (remote.mode, remote.size) == (local.mode, local.size) == ("RGBA", chelsea.size)
    assert remote.convert("RGB").tobytes() == chelsea.tobytes()  # only the alpha is new
    # GrabCut seeds its colour models from OpenCV's per-thread RNG, so runs differ slightly.
    remote_fg, local_fg = _alpha_mask(remote), _alpha_mask(local)
    iou = (remote_fg & local_fg).sum() / (remote_fg | local_fg).sum()
    assert iou > 0.9


# --- the server dies and comes back ---------------------------------------------------------------------


def test_dead_server_opens_the_breaker_and_a_restarted_one_is_used_again(
    tmp_path: Path, chelsea: Image.Image
) -> None:
    server = ModelServer(_free_port(), tmp_path / "server.log")
    server.start()
    transport = CountingTransport()
    detector = OipPetDetector(
        _config(server.url, DETECT_MODEL, max_retries=1, breaker_fail_max=2, breaker_reset_seconds=0.5),
        transport=transport,
    )
    try:
        expected = detector.detect(chelsea)
        assert expected

        server.kill()
        with pytest.raises(ModelError) as dead:
            detector.detect(chelsea)
        assert dead.value.retryable is True
        assert "circuit now open" in dead.value.message  # 2 attempts = breaker_fail_max
        assert detector.http.circuit_open
        sent = transport.sent

        with pytest.raises(ModelError) as fast:
            detector.detect(chelsea)
        assert fast.value.retryable is True
        assert "circuit open" in fast.value.message
        assert transport.sent == sent  # failed fast, without a request

        server.start()  # same port

        def detects_again() -> list[Detection] | None:
            try:
                return detector.detect(chelsea)
            except ModelError as exc:
                assert exc.retryable, exc.message
                return None

        assert (
            wait_until(detects_again, timeout=30, what="the breaker to let a trial call through") == expected
        )
        assert detector.http.breaker.current_state == "closed"
    finally:
        detector.close()
        server.kill()


# --- a scripted server ------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


@dataclass
class Seen:
    at: float
    path: str
    headers: dict[str, str]
    body: bytes


class ScriptedServer:
    """Answers from a list (the last answer repeats), recording each request; optionally, every handler
    waits at a barrier first, to show requests overlap."""

    def __init__(self, answers: list[Answer], barrier: threading.Barrier | None = None) -> None:
        self.answers = answers
        self.seen: list[Seen] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.barrier = barrier
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._answer()

            def do_POST(self) -> None:
                self._answer()

            def _answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                answer = scripted.record(Seen(time.monotonic(), self.path, dict(self.headers), body))
                with scripted.lock:  # before answering: the client may send its next request at once
                    scripted.in_flight -= 1
                self.send_response(answer.status)
                self.send_header("Content-Type", answer.content_type)
                self.send_header("Content-Length", str(len(answer.body)))
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(answer.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def record(self, seen: Seen) -> Answer:
        with self.lock:
            self.seen.append(seen)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if self.barrier is not None:
            # Broken: fewer requests overlapped than the barrier's parties.
            with contextlib.suppress(threading.BrokenBarrierError):
                self.barrier.wait()
        return answer


@pytest.fixture
def scripted() -> Iterator[list[ScriptedServer]]:
    started: list[ScriptedServer] = []
    yield started
    for server in started:
        if server.barrier is not None:
            server.barrier.abort()
        server.httpd.shutdown()
        server.httpd.server_close()


def _serve(
    started: list[ScriptedServer], *answers: Answer, barrier: threading.Barrier | None = None
) -> ScriptedServer:
    server = ScriptedServer(list(answers), barrier)
    server.thread.start()
    started.append(server)
    return server


OIP_OK = Answer(
    body=json.dumps(
        {
            "model_name": DETECT_MODEL,
            "outputs": [
                {"name": "boxes", "datatype": "FP32", "shape": [1, 4], "data": [10, 20, 100, 80]},
                {"name": "scores", "datatype": "FP32", "shape": [1], "data": [21.0]},
                {"name": "support", "datatype": "INT32", "shape": [1], "data": [3]},
            ],
        }
    ).encode()
)
OIP_DETECTION = Detection(Box(10, 20, 100, 80), 21.0, support=3)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_500_then_200_is_retried_to_success(scripted: list[ScriptedServer], chelsea: Image.Image) -> None:
    server = _serve(scripted, Answer(500, b'{"error": "model crashed"}'), OIP_OK)
    detector = OipPetDetector(_config(server.url, DETECT_MODEL))
    assert detector.detect(chelsea) == [OIP_DETECTION]
    assert [s.path for s in server.seen] == [f"/v2/models/{DETECT_MODEL}/infer"] * 2
    request = json.loads(server.seen[0].body)
    (tensor,) = request["inputs"]
    assert (tensor["name"], tensor["datatype"], tensor["shape"]) == ("image", "BYTES", [1])
    assert Image.open(io.BytesIO(base64.b64decode(tensor["data"][0]))).size == chelsea.size


def test_retry_after_on_429_is_honoured(scripted: list[ScriptedServer], chelsea: Image.Image) -> None:
    server = _serve(scripted, Answer(429, b'{"error": "busy"}', {"Retry-After": "1"}), OIP_OK)
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        time.sleep(seconds)

    detector = OipPetDetector(_config(server.url, DETECT_MODEL), sleep=sleep)
    assert detector.detect(chelsea) == [OIP_DETECTION]
    assert waits == [1.0]  # not the 0.01 s backoff
    first, second = server.seen
    assert second.at - first.at >= 1.0


def test_a_retry_after_beyond_the_cap_ends_the_call_retryable(
    scripted: list[ScriptedServer], chelsea: Image.Image
) -> None:
    server = _serve(scripted, Answer(429, b"{}", {"Retry-After": "3600"}), OIP_OK)
    detector = OipPetDetector(_config(server.url, DETECT_MODEL, retry_after_cap_seconds=5))
    with pytest.raises(ModelError) as exc_info:
        detector.detect(chelsea)
    assert exc_info.value.retryable is True  # the pipeline's delay tiers wait instead of this worker
    assert len(server.seen) == 1


def test_400_is_permanent_and_leaves_the_breaker_closed(
    scripted: list[ScriptedServer], chelsea: Image.Image
) -> None:
    server = _serve(scripted, Answer(400, b'{"error": "image too small"}'))
    detector = OipPetDetector(_config(server.url, DETECT_MODEL, breaker_fail_max=1))
    for _ in range(3):
        with pytest.raises(ModelError) as exc_info:
            detector.detect(chelsea)
        assert exc_info.value.retryable is False
        assert "image too small" in exc_info.value.message
    assert len(server.seen) == 3  # never retried, never short-circuited
    assert not detector.http.circuit_open


def test_persistent_503_is_retryable_and_opens_the_breaker(
    scripted: list[ScriptedServer], chelsea: Image.Image
) -> None:
    server = _serve(scripted, Answer(503, b"overloaded"))
    detector = OipPetDetector(_config(server.url, DETECT_MODEL, max_retries=2, breaker_fail_max=3))
    with pytest.raises(ModelError) as exc_info:
        detector.detect(chelsea)
    assert exc_info.value.retryable is True
    assert "HTTP 503" in exc_info.value.message
    assert len(server.seen) == 3
    assert detector.http.circuit_open


@pytest.mark.parametrize(
    "answer",
    [
        Answer(body=b"<html>not json</html>", content_type="text/html"),
        Answer(body=b'{"outputs": "nope"}'),
        Answer(body=b'{"outputs": [{"name": "boxes", "datatype": "FP32", "shape": [1, 4], "data": [1]}]}'),
    ],
)
def test_malformed_oip_answers_are_permanent(
    scripted: list[ScriptedServer], chelsea: Image.Image, answer: Answer
) -> None:
    server = _serve(scripted, answer)
    detector = OipPetDetector(_config(server.url, DETECT_MODEL))
    with pytest.raises(ModelError) as exc_info:
        detector.detect(chelsea)
    assert exc_info.value.retryable is False
    assert len(server.seen) == 1


def test_openai_request_shape_and_undecodable_results(
    scripted: list[ScriptedServer], chelsea: Image.Image
) -> None:
    garbage = base64.b64encode(b"\x89PNG\r\n\x1a\n truncated").decode()
    server = _serve(
        scripted, Answer(body=json.dumps({"created": 1, "data": [{"b64_json": garbage}]}).encode())
    )
    stylizer = OpenAIImagesStylizer(_config(server.url, "dall-e-2", api_key="sk-1"), size="902x600")
    with pytest.raises(ModelError) as exc_info:
        stylizer.stylize(chelsea, "make it pop art")
    assert exc_info.value.retryable is False
    assert "not a usable image" in exc_info.value.message
    (seen,) = server.seen
    assert seen.path == "/v1/images/edits"
    assert seen.headers["Authorization"] == "Bearer sk-1"
    assert seen.headers["Content-Type"].startswith("multipart/form-data")
    for name, value in (
        ("prompt", b"make it pop art"),
        ("model", b"dall-e-2"),
        ("n", b"1"),
        ("response_format", b"b64_json"),
        ("size", b"902x600"),
    ):
        assert f'name="{name}"\r\n\r\n'.encode() + value + b"\r\n" in seen.body
    assert b'name="image"; filename="image.png"' in seen.body


def test_rembg_request_shape_and_wrong_results(scripted: list[ScriptedServer], chelsea: Image.Image) -> None:
    rgb_result = Answer(body=_png(chelsea), content_type="image/png")  # no alpha
    small_result = Answer(body=_png(Image.new("RGBA", (10, 10))), content_type="image/png")
    not_an_image = Answer(body=b'{"detail": "ok?"}')
    server = _serve(scripted, rgb_result, small_result, not_an_image)
    matter = RembgMatter(_config(server.url, "isnet-general-use"))
    hint = Box(82, 0, 353, 300)
    messages = []
    for _ in range(3):
        with pytest.raises(ModelError) as exc_info:
            matter.matte(chelsea, hint=hint)
        assert exc_info.value.retryable is False
        messages.append(exc_info.value.message)
    assert "expected RGBA" in messages[0]
    assert "expected 451x300" in messages[1]
    assert "not a usable image" in messages[2]
    first = server.seen[0]
    assert first.path.startswith("/api/remove?extras=")
    extras = json.loads(httpx.URL(first.path).params["extras"])
    assert extras == {"sam_prompt": [{"type": "rectangle", "data": [82, 0, 435, 300]}]}
    assert b'name="model"\r\n\r\nisnet-general-use\r\n' in first.body
    assert b'name="file"; filename="image.png"' in first.body


def test_calls_run_in_parallel_up_to_max_concurrency(
    scripted: list[ScriptedServer], chelsea: Image.Image
) -> None:
    # Two handlers must meet at the barrier: only possible if two requests are in flight at once.
    server = _serve(scripted, OIP_OK, barrier=threading.Barrier(2, timeout=20))
    detector = OipPetDetector(_config(server.url, DETECT_MODEL, max_concurrency=2, max_retries=0))
    results: list[object] = []

    def call() -> None:
        try:
            results.append(detector.detect(chelsea))
        except ModelError as exc:
            results.append(exc)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == [[OIP_DETECTION], [OIP_DETECTION]]
    assert server.max_in_flight == 2


def test_max_concurrency_one_keeps_requests_apart(
    scripted: list[ScriptedServer], chelsea: Image.Image
) -> None:
    # Each handler waits up to 0.5 s for a second request to overlap; with one slot none can.
    server = _serve(scripted, OIP_OK, barrier=threading.Barrier(2, timeout=0.5))
    detector = OipPetDetector(_config(server.url, DETECT_MODEL, max_concurrency=1, max_retries=0))
    threads = [threading.Thread(target=detector.detect, args=(chelsea,)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(server.seen) == 3
    assert server.max_in_flight == 1
