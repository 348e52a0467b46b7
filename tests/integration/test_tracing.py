"""One HTTP-submitted task is one trace, from the API's request span to the callback's delivery.

The pipeline's services run with IMGPIPE_TRACE_EXPORTER=file (conftest's PIPELINE_TEST_SETTINGS), so
each appends its finished spans to its own JSON-lines file; the test reads them all.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from typing import Any

import pytest

from imgpipe.client import ApiClient, TaskRequest
from imgpipe.localstack.pipeline import SERVICES, LocalPipeline
from imgpipe.localstack.waiting import wait_until
from imgpipe.samples import photo_jpeg
from imgpipe.testing.receivers import run_receivers

pytestmark = pytest.mark.integration

# Every service an HTTP task with a callback passes through (ingest-submit is the other door).
TRACED_SERVICES = {"ingest-api", "detect", "generate", "matte", "ingest-projector", "callback"}


def spans_of_task(pipeline: LocalPipeline, task_id: str) -> tuple[set[str], list[dict[str, Any]]]:
    """The ids of the traces the task's messages were handled in, and every span of those traces.
    The files hold every span of the session's pipeline (and of earlier runs on a kept stack): lines
    are picked by substring before any is parsed."""
    lines = []
    for service in SERVICES:
        with contextlib.suppress(FileNotFoundError):
            lines += pipeline.trace_file(service).read_text().splitlines()

    def parsed(candidates: list[str]) -> list[dict[str, Any]]:
        spans = []
        for line in candidates:
            with contextlib.suppress(ValueError):  # a line still being written
                spans.append(json.loads(line))
        return spans

    keyed = {
        span["trace_id"]
        for span in parsed([line for line in lines if task_id in line])
        if span["attributes"].get("messaging.kafka.message.key") == task_id
    }
    return keyed, [
        span
        for span in parsed([line for line in lines if any(trace_id in line for trace_id in keyed)])
        if span["trace_id"] in keyed
    ]


def test_an_http_task_is_one_trace_from_the_api_to_its_callback_delivery(
    pipeline: LocalPipeline, api: ApiClient
) -> None:
    assert set(SERVICES) >= TRACED_SERVICES
    path = f"/traced-{uuid.uuid4().hex[:8]}"
    with run_receivers() as receivers:
        request = TaskRequest("watercolor", image=photo_jpeg(), callback_url=receivers.url(path))
        task_id = api.submit(request)["id"]
        wait_until(lambda: task_id in receivers.task_ids(path), 120, "the task's callback")
        (delivered,) = receivers.requests_to(path)
    # The webhook carries no trace context of ours: receivers are someone else's systems.
    assert "traceparent" not in {name.lower() for name in delivered.headers}

    found: dict[str, list[dict[str, Any]]] = {}

    def trace_complete() -> bool:
        keyed, trace = spans_of_task(pipeline, task_id)
        assert len(keyed) <= 1, f"the task's messages were handled in {len(keyed)} traces: {keyed}"
        if not keyed:
            return False
        found["trace"] = trace
        sent = any(s["service"] == "callback" and s["kind"] == "CLIENT" for s in trace)
        callback_spans = {s["span_id"] for s in trace if s["service"] == "callback"}
        attempt_projected = any(
            s["service"] == "ingest-projector" and s["parent_id"] in callback_spans for s in trace
        )
        return sent and attempt_projected and {span["service"] for span in trace} >= TRACED_SERVICES

    try:
        wait_until(trace_complete, 30, "spans of every service in the task's trace")
    except TimeoutError:
        seen = sorted({(s["service"], s["name"]) for s in found.get("trace", [])})
        raise AssertionError(f"the trace has spans of {seen} only") from None

    trace = found["trace"]
    by_id = {span["span_id"]: span for span in trace}
    (root,) = [span for span in trace if span["parent_id"] is None]
    assert (root["service"], root["kind"], root["name"]) == ("ingest-api", "SERVER", "POST /v1/tasks")
    orphans = [span for span in trace if span["parent_id"] is not None and span["parent_id"] not in by_id]
    assert not orphans, f"spans whose parent is not in the trace: {orphans}"

    def ancestry(span: dict[str, Any]) -> list[str]:
        chain = [span["service"]]
        while span["parent_id"] is not None:
            span = by_id[span["parent_id"]]
            chain.append(span["service"])
        return chain

    # The delivery descends from the API's request through every stage, in order.
    (send,) = [span for span in trace if span["service"] == "callback" and span["kind"] == "CLIENT"]
    assert send["name"] == "POST" and send["attributes"]["http.response.status_code"] == 200
    stages = [service for service in reversed(ancestry(send)) if service != "callback"]
    assert list(dict.fromkeys(stages)) == ["ingest-api", "detect", "generate", "matte"]
    # The projector writes what the stages and the callback service reported, each in the reporter's span.
    projected = [span for span in trace if span["service"] == "ingest-projector"]
    reporters = {by_id[span["parent_id"]]["service"] for span in projected}
    assert reporters == {"detect", "generate", "matte", "callback"}, reporters
