"""OpenTelemetry tracing: W3C trace context rides in Kafka headers so one task is one trace.

Export is off by default (spans are still created, so ids reach the logs and the headers);
IMGPIPE_TRACE_EXPORTER=otlp sends them to the OTLP/HTTP endpoint in the standard
OTEL_EXPORTER_OTLP_* variables, `console` prints them.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

_configured = False


def configure_tracing(service_name: str, exporter: str = "none") -> None:
    """Install the tracer provider once per process."""
    global _configured
    if _configured:
        return
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    span_exporter: SpanExporter | None = None
    if exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        span_exporter = OTLPSpanExporter()
    elif exporter == "console":
        span_exporter = ConsoleSpanExporter()
    if span_exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(span_exporter))
    trace.set_tracer_provider(provider)
    _configured = True


def context_from_headers(headers: Mapping[str, bytes]) -> Context:
    carrier = {name: value.decode("latin-1") for name, value in headers.items()}
    return propagate.extract(carrier)


def inject_current_context(headers: MutableMapping[str, str | bytes]) -> None:
    """Add traceparent/tracestate for the current span, unless the headers carry their own."""
    if "traceparent" in headers:
        return
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    headers.update(carrier)


def current_trace_id() -> str | None:
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None
