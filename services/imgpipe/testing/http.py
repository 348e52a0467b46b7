"""A real HTTP server for tests: fixed responses per path, and a count of every connection it accepted
(to prove that a refused request never reached it)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socket import socket
from typing import Any

# Linux routes all of 127/8 to loopback: a server on this address stands for an allow-listed image
# host, while 127.0.0.1 stands for an internal service that must stay unreachable.
ALLOWED_IMAGE_HOST = "127.0.0.2"


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], routes: Mapping[str, Reply]) -> None:
        super().__init__(address, _Handler)
        self.routes = routes
        self.connections = 0
        self._count_lock = threading.Lock()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        with self._count_lock:
            self.connections += 1
        return True


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        reply = self.server.routes.get(self.path, Reply(404, b"not found"))
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)

    do_POST = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass(frozen=True)
class ServedRoutes:
    host: str
    port: int
    server: _Server

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    @property
    def connections(self) -> int:
        return self.server.connections


@contextmanager
def serve(routes: Mapping[str, Reply], host: str = "127.0.0.1", port: int = 0) -> Iterator[ServedRoutes]:
    server = _Server((host, port), routes)
    thread = threading.Thread(target=server.serve_forever, name=f"http-{host}", daemon=True)
    thread.start()
    try:
        sock: socket = server.socket
        yield ServedRoutes(host, sock.getsockname()[1], server)
    finally:
        server.shutdown()
        server.server_close()
