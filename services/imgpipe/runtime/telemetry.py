"""OpenTelemetry tracing: W3C trace context rides in Kafka headers so one task is one trace.

Export is off by default (spans are still created, so ids reach the logs and the headers);
IMGPIPE_TRACE_EXPORTER=otlp sends them to the OTLP/HTTP endpoint in the standard
OTEL_EXPORTER_OTLP_* variables, `console` prints them, and `file` appends one JSON line per span
to IMGPIPE_TRACE_FILE (what tests and the local pipeline read; see `JsonLinesSpanExporter`).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

if TYPE_CHECKING:
    from fastapi import FastAPI

_configured = False
# Requests to these paths make no span: probes and scrapes would drown the traces of real work.
UNTRACED_PATHS = ("/healthz", "/readyz", "/metrics")


class JsonLinesSpanExporter(SpanExporter):
    """Appends each finished span to `path` as one JSON line: trace_id, span_id, parent_id (hex, or
    null for a root), name, kind, service (the resource's service.name), start/end (ns), status,
    attributes. Each line is one write to a file opened for appending, so processes may share a file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = Path(path)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(span_record(span), default=str) + "\n" for span in spans)
        with self._lock, self._path.open("a", encoding="utf-8") as out:
            out.write(lines)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def span_record(span: ReadableSpan) -> dict[str, Any]:
    context = span.get_span_context()
    assert context is not None
    parent = span.parent
    return {
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
        "parent_id": format(parent.span_id, "016x") if parent is not None else None,
        "name": span.name,
        "kind": span.kind.name,
        "service": span.resource.attributes.get("service.name"),
        "start": span.start_time,
        "end": span.end_time,
        "status": span.status.status_code.name,
        "attributes": {key: _plain(value) for key, value in (span.attributes or {}).items()},
    }


def _plain(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value


def configure_tracing(service_name: str, exporter: str = "none", trace_file: str | None = None) -> None:
    """Install the tracer provider once per process."""
    global _configured
    if _configured:
        return
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    elif exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    elif exporter == "file":
        if not trace_file:
            from imgpipe.runtime.settings import SettingsError

            raise SettingsError("IMGPIPE_TRACE_FILE: IMGPIPE_TRACE_EXPORTER=file needs a path to write to")
        # Written as each span ends: a test reads the file while the process runs, and a killed
        # process loses nothing it finished.
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(trace_file)))
    trace.set_tracer_provider(provider)
    _configured = True


def instrument_fastapi(app: FastAPI, tracer_provider: TracerProvider | None = None) -> None:
    """A SERVER span for every request but the probes', current while the route runs (so what the
    route writes to the outbox carries it); no spans for the ASGI send/receive events.
    `tracer_provider` is for tests; the process's global one otherwise."""
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=tracer_provider,
        # Matched against the request's URL without its query: scheme://host/path.
        excluded_urls=",".join(f"://[^/]*{path}$" for path in UNTRACED_PATHS),
        exclude_spans=["receive", "send"],
    )


def context_from_headers(headers: Mapping[str, bytes]) -> Context:
    carrier = {name: value.decode("latin-1") for name, value in headers.items()}
    return propagate.extract(carrier)


def context_from_traceparent(traceparent: str) -> Context:
    return propagate.extract({"traceparent": traceparent})


def inject_current_context(headers: MutableMapping[str, str | bytes]) -> None:
    """Add traceparent/tracestate for the current span, unless the headers carry their own."""
    if "traceparent" in headers:
        return
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    headers.update(carrier)


def current_traceparent() -> str | None:
    """The W3C traceparent of the current span, or None outside any span."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


def current_trace_id() -> str | None:
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None
