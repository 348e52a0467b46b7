"""JSON logging with the current task and trace ids on every line.

Handlers set the ids with `log_context(task_id=..., trace_id=...)`; a filter copies them from
context variables into each record, so no call site has to pass them.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from collections.abc import Iterator

from pythonjsonlogger.json import JsonFormatter

_task_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("task_id", default=None)
_trace_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("trace_id", default=None)


class _ContextFilter(logging.Filter):
    def __init__(self, service_name: str) -> None:
        super().__init__()
        self.service_name = service_name

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service_name
        record.task_id = _task_id.get()
        record.trace_id = _trace_id.get()
        return True


def configure_logging(service_name: str, level: str = "INFO", fmt: str = "json") -> None:
    """Route all logging to stderr, as JSON lines (default) or plain text for humans."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter(service_name))
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s %(service)s %(task_id)s %(trace_id)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(task_id)s] %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


@contextlib.contextmanager
def log_context(task_id: str | None = None, trace_id: str | None = None) -> Iterator[None]:
    """Attach a task id and trace id to every log line written inside the block."""
    task_token = _task_id.set(task_id)
    trace_token = _trace_id.set(trace_id)
    try:
        yield
    finally:
        _task_id.reset(task_token)
        _trace_id.reset(trace_token)
