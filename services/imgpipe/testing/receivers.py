"""Webhook receivers for tests and benchmarks: one real HTTP server, any number of receiver paths.

Each path records every request it gets (arrival time, headers, body) and answers as its current
`Behavior` says; tests change a behavior while deliveries run (fail for a while, hang, answer 410).
"""

from __future__ import annotations

import bisect
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Behavior:
    status: int = 200
    retry_after: str | None = None
    # While set, requests wait (up to the sender's timeout) instead of being answered.
    hang: threading.Event | None = None


@dataclass(frozen=True)
class Received:
    at: float  # time.monotonic() on arrival
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def items(self) -> list[dict[str, Any]]:
        """The callbacks in the request: one, or a batch's array."""
        body = self.json()
        return body if isinstance(body, list) else [body]


@dataclass
class Receivers:
    host: str
    port: int
    behaviors: dict[str, Behavior] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    released: threading.Event = field(default_factory=threading.Event)  # ends every hang at teardown

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def behave(self, path: str, behavior: Behavior) -> None:
        with self.lock:
            self.behaviors[path] = behavior

    def requests_to(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]

    def busiest_second(self, path: str) -> int:
        """The most requests `path` got within any one second (a window opening at each arrival)."""
        arrivals = sorted(r.at for r in self.requests_to(path))
        return max(
            (bisect.bisect_left(arrivals, start + 1.0) - i for i, start in enumerate(arrivals)), default=0
        )

    def task_ids(self, path: str | None = None) -> set[str]:
        with self.lock:
            requests = [r for r in self.received if path is None or r.path == path]
        return {item["task_id"] for r in requests for item in r.items if r.body}


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        receivers = self.server.receivers
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        record = Received(time.monotonic(), self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        with receivers.lock:
            receivers.received.append(record)
            behavior = receivers.behaviors.get(self.path, Behavior())
        if behavior.hang is not None and behavior.hang.is_set():
            receivers.released.wait()
            return  # the sender gave up long ago; answer nothing
        self.send_response(behavior.status)
        if behavior.retry_after is not None:
            self.send_header("Retry-After", behavior.retry_after)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], receivers: Receivers) -> None:
        super().__init__(address, _Handler)
        self.receivers = receivers


@contextmanager
def run_receivers(host: str = "127.0.0.1") -> Iterator[Receivers]:
    server = _Server((host, 0), Receivers(host, 0))
    receivers = server.receivers
    receivers.port = server.socket.getsockname()[1]
    thread = threading.Thread(target=server.serve_forever, name="receivers", daemon=True)
    thread.start()
    try:
        yield receivers
    finally:
        receivers.released.set()
        server.shutdown()
        server.server_close()
