"""Tracing plumbing: the JSON-lines exporter, the API's request spans, trace context of queued callbacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind

from imgpipe.callback.url_queue import Queued, item_from_json, item_to_json
from imgpipe.runtime.telemetry import (
    JsonLinesSpanExporter,
    context_from_traceparent,
    current_traceparent,
    instrument_fastapi,
)

pytestmark = pytest.mark.unit


def traced(path: Path, service: str = "svc") -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(path)))
    return provider


def spans_in(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_each_span_is_one_json_line_naming_its_trace_parent_and_service(tmp_path: Path) -> None:
    out = tmp_path / "deep" / "spans.jsonl"
    tracer = traced(out, "detect").get_tracer("test")
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

    with (
        tracer.start_as_current_span(
            "outer", context=context_from_traceparent(parent), kind=SpanKind.CONSUMER
        ),
        tracer.start_as_current_span("inner", attributes={"sizes": (1, 2)}),
    ):
        pass

    inner, outer = spans_in(out)
    assert outer["trace_id"] == inner["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert outer["parent_id"] == "00f067aa0ba902b7"
    assert inner["parent_id"] == outer["span_id"]
    assert (outer["name"], outer["kind"], outer["service"]) == ("outer", "CONSUMER", "detect")
    assert inner["attributes"] == {"sizes": [1, 2]}


def test_api_requests_get_a_server_span_current_in_sync_routes_but_probes_none(tmp_path: Path) -> None:
    out = tmp_path / "spans.jsonl"
    app = FastAPI()
    seen: dict[str, str | None] = {}

    @app.post("/v1/tasks")
    def submit() -> dict[str, str]:  # a sync route: FastAPI runs it in a worker thread
        seen["traceparent"] = current_traceparent()
        return {}

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {}

    instrument_fastapi(app, tracer_provider=traced(out, "ingest-api"))
    with TestClient(app) as client:
        client.get("/healthz")
        client.post("/v1/tasks")

    (span,) = spans_in(out)
    assert (span["kind"], span["service"], span["parent_id"]) == ("SERVER", "ingest-api", None)
    assert span["name"] == "POST /v1/tasks"
    assert (seen["traceparent"] or "").startswith(f"00-{span['trace_id']}-{span['span_id']}-")


def test_a_queued_callback_keeps_its_trace_context_and_old_items_load_without_one() -> None:
    queued = Queued("t1", "tenant", "", False, 1.0, traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01")
    assert item_from_json(json.loads(json.dumps(item_to_json(queued)))) == queued
    old = {"task_id": "t1", "tenant_id": "tenant", "result": "", "batched": False, "queued_at": 1.0}
    loaded = item_from_json(old)
    assert loaded is not None and loaded.traceparent == ""
