"""The side HTTP server every service runs: /healthz (liveness), /readyz (readiness), /metrics.

Liveness means the service loop is still making progress (it calls `beat()`); readiness means
every registered check passes (for a consumer: it has joined its group; plus its dependencies).
"""

from __future__ import annotations

import json
import logging
import socketserver
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], bool]
StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # probes would flood the logs
        pass


class Health:
    """Liveness heartbeat and named readiness checks, served over HTTP with the metrics."""

    def __init__(self, liveness_stale_seconds: float) -> None:
        self._stale_after = liveness_stale_seconds
        self._last_beat = time.monotonic()
        self._checks: dict[str, ReadinessCheck] = {}
        self._metrics_app: WsgiApp = make_wsgi_app()
        self._server: WSGIServer | None = None

    def beat(self) -> None:
        self._last_beat = time.monotonic()

    def add_readiness_check(self, name: str, check: ReadinessCheck) -> None:
        self._checks[name] = check

    def is_live(self) -> bool:
        return time.monotonic() - self._last_beat < self._stale_after

    def readiness(self) -> dict[str, bool]:
        results = {}
        for name, check in self._checks.items():
            try:
                results[name] = bool(check())
            except Exception:
                log.warning("readiness check %s raised", name, exc_info=True)
                results[name] = False
        return results

    def wsgi_app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return self._metrics_app(environ, start_response)
        if path == "/healthz":
            live = self.is_live()
            return _json_response(start_response, live, {"live": live})
        if path == "/readyz":
            checks = self.readiness()
            return _json_response(start_response, all(checks.values()), {"checks": checks})
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]

    def serve(self, host: str, port: int) -> int:
        """Start serving in a daemon thread; returns the bound port (useful when port is 0)."""
        self._server = make_server(
            host, port, self.wsgi_app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
        )
        threading.Thread(target=self._server.serve_forever, name="health-server", daemon=True).start()
        return int(self._server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def _json_response(start_response: StartResponse, ok: bool, body: dict[str, Any]) -> list[bytes]:
    status = "200 OK" if ok else "503 Service Unavailable"
    start_response(status, [("Content-Type", "application/json")])
    return [json.dumps(body).encode()]
