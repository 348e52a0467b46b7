"""The whole pipeline on the real stack: every service a process, tasks in over HTTP and the submit topic.

The acceptance tests of the pipeline issue: volume, idempotency, each error code from a real bad
input or fault, SSRF through the pipeline, kill -9 of each stage, poison messages on every topic.
"""

from __future__ import annotations

import functools
import io
import json
import subprocess
import sys
import uuid
from collections.abc import Sequence
from ipaddress import ip_address
from typing import Any

import httpx
import pytest
from PIL import Image
from sqlalchemy import select

from imgpipe.client import ApiClient, TaskRequest, TopicSubmitter
from imgpipe.contracts.registry import TopicKey, default_registry
from imgpipe.demo import run_demo
from imgpipe.ingest.accept import task_id_for
from imgpipe.localstack.pipeline import (
    DEMO_TENANT,
    LOOPBACK_NETWORKS,
    SERVICES,
    LocalPipeline,
    egress_overrides,
)
from imgpipe.localstack.waiting import wait_until
from imgpipe.netguard import EgressPolicy
from imgpipe.runtime.kafka import DEAD_LETTER_REASON_HEADER, ORIGIN_TOPIC_HEADER, Received
from imgpipe.samples import photo_jpeg
from imgpipe.store.db import make_engine, make_sessions
from imgpipe.store.models import Task, TaskState
from imgpipe.testing import images
from imgpipe.testing.http import ALLOWED_IMAGE_HOST, Reply, serve
from imgpipe.testing.kafka import produce, read_topic

pytestmark = pytest.mark.integration

REGISTRY = default_registry()
PROMPTS = ("a watercolor painting", "pencil sketch", "cartoon", "vintage sepia photo", "pop art")


def run_id() -> str:
    return uuid.uuid4().hex[:10]


def assert_result_is_final_png(api: ApiClient, view: dict[str, Any]) -> None:
    assert view["state"] == "succeeded", view
    png = httpx.get(view["result_url"], timeout=30)
    assert png.status_code == 200
    image = Image.open(io.BytesIO(png.content))
    assert (image.format, image.mode) == ("PNG", "RGBA")
    assert min(image.size) == 350


@pytest.mark.timeout(1500)
def test_200_tasks_half_over_http_half_over_the_topic_all_succeed(
    pipeline: LocalPipeline, api: ApiClient, submitter: TopicSubmitter
) -> None:
    cat, run = photo_jpeg(), run_id()
    task_ids = [
        api.submit(TaskRequest(PROMPTS[i % len(PROMPTS)], image=cat, idempotency_key=f"{run}-http-{i}"))["id"]
        for i in range(100)
    ]
    task_ids += [
        submitter.submit(
            TaskRequest(PROMPTS[i % len(PROMPTS)], image=cat, idempotency_key=f"{run}-topic-{i}")
        )
        for i in range(100)
    ]
    submitter.flush()

    views = api.wait(task_ids, timeout=1200)

    assert len(set(task_ids)) == 200
    for view in views.values():
        assert_result_is_final_png(api, view)
    engine = make_engine(pipeline.endpoints.database_url, pool_size=1)
    with make_sessions(engine)() as session:
        rows = session.scalars(select(Task).where(Task.id.in_([uuid.UUID(t) for t in task_ids]))).all()
    engine.dispose()
    assert len(rows) == 200
    for row in rows:
        assert row.state == TaskState.SUCCEEDED
        assert row.started_at is not None and row.completed_at is not None
        assert row.created_at <= row.started_at <= row.completed_at
        assert row.processing_ms is not None and row.processing_ms > 0
        assert row.result_object_key == f"tasks/{row.id}/matte.png"


def test_the_same_idempotency_key_makes_one_task_over_both_doors(
    api: ApiClient, submitter: TopicSubmitter
) -> None:
    request = TaskRequest("watercolor", image=photo_jpeg(), idempotency_key=f"dup-{run_id()}")
    over_http = [api.submit(request)["id"] for _ in range(3)]
    over_topic = [submitter.submit(request) for _ in range(3)]
    submitter.flush()

    assert len(set(over_http + over_topic)) == 1
    view = api.wait(over_http[:1], timeout=120)[over_http[0]]
    assert_result_is_final_png(api, view)
    listed = api.list(state="succeeded", page_size=200)
    assert sum(1 for task in listed if task["id"] == over_http[0]) == 1


@pytest.mark.timeout(300)
def test_every_error_code_comes_from_a_real_bad_input_or_fault(
    pipeline: LocalPipeline, api: ApiClient
) -> None:
    cat = photo_jpeg()
    with serve(
        {"/cat.jpg": Reply(body=cat, headers={"Content-Type": "image/jpeg"})}, host=ALLOWED_IMAGE_HOST
    ) as host:
        submitted = {
            "invalid_image": api.submit(TaskRequest("x", image=images.truncated(cat))),
            "unsupported_format": api.submit(TaskRequest("x", image=images.gif())),
            "image_too_large": api.submit(TaskRequest("x", image=images.decompression_bomb())),
            "fetch_failed": api.submit(TaskRequest("x", image_url=host.url("/missing.jpg"))),
            "no_pet_detected": api.submit(TaskRequest("x", image=photo_jpeg("astronaut"))),
            "timeout": api.submit(TaskRequest("x", image=cat, time_limit_seconds=0.001)),
        }
        from_url = api.submit(TaskRequest("watercolor", image_url=host.url("/cat.jpg")))

        # canceled: a task waits while detect is down, is canceled, and stays canceled once detect is back.
        pipeline.stop("detect")
        try:
            waiting = api.submit(TaskRequest("x", image=cat))
            api.cancel(waiting["id"])
        finally:
            pipeline.start("detect")
        submitted["canceled"] = waiting

        views = api.wait([task["id"] for task in [*submitted.values(), from_url]], timeout=240)

    for code, task in submitted.items():
        view = views[task["id"]]
        assert view["error"] is not None and view["error"]["code"] == code, view
        assert view["state"] == ("canceled" if code == "canceled" else "failed")
        assert view["error"]["message"]
    assert_result_is_final_png(api, views[from_url["id"]])


@pytest.mark.parametrize("stage", ["detect", "generate", "matte"])
@pytest.mark.timeout(600)
def test_kill_9_of_a_stage_worker_mid_run_loses_no_task(
    pipeline: LocalPipeline, api: ApiClient, stage: str
) -> None:
    cat, run = photo_jpeg(), run_id()
    task_ids = [
        api.submit(TaskRequest("cartoon", image=cat, idempotency_key=f"{run}-{i}"))["id"] for i in range(24)
    ]
    # Kill once the stage is busy with this run: some tasks are past it, some not yet there.
    wait_until(
        lambda: any(api.get(t)["stage"] == stage for t in task_ids), 120, f"{stage} to be working on the run"
    )
    pipeline.kill(stage)
    pipeline.start(stage)

    views = api.wait(task_ids, timeout=480)

    assert {view["state"] for view in views.values()} == {"succeeded"}


@pytest.mark.timeout(300)
def test_a_poison_message_on_each_topic_is_dead_lettered_and_the_partition_keeps_flowing(
    pipeline: LocalPipeline, api: ApiClient, submitter: TopicSubmitter
) -> None:
    bootstrap = pipeline.endpoints.kafka_bootstrap_servers
    idempotency_key = f"poison-{run_id()}"
    task_id = str(task_id_for(DEMO_TENANT, idempotency_key))
    # Keyed like the healthy task that follows, so the poison sits in the very partitions it must pass.
    poisoned = {REGISTRY.name(TopicKey.SUBMIT): idempotency_key} | {
        REGISTRY.name(key): task_id
        for key in (TopicKey.DETECT, TopicKey.GENERATE, TopicKey.MATTE, TopicKey.EVENTS, TopicKey.RESULT)
    }
    for topic, key in poisoned.items():
        produce(bootstrap, topic, [(key, b"\xff\x00 not a valid payload")])
    healthy = submitter.submit(TaskRequest("watercolor", image=photo_jpeg(), idempotency_key=idempotency_key))
    submitter.flush()

    assert_result_is_final_png(api, api.wait([healthy], timeout=180)[healthy])

    def dead_letters(seen: Sequence[Received]) -> bool:
        return {r.header(ORIGIN_TOPIC_HEADER) for r in seen if r.key_text in poisoned.values()} >= set(
            poisoned
        )

    found = [
        r
        for r in read_topic(bootstrap, REGISTRY.name(TopicKey.DEAD_LETTER), until=dead_letters, timeout=120)
        if r.key_text in poisoned.values()
    ]
    for record in found:
        assert record.header(DEAD_LETTER_REASON_HEADER), record


def test_one_task_is_one_trace_across_the_services(pipeline: LocalPipeline, api: ApiClient) -> None:
    task_id = api.submit(TaskRequest("watercolor", image=photo_jpeg()))["id"]
    api.wait([task_id], timeout=120)
    bootstrap = pipeline.endpoints.kafka_bootstrap_servers

    def trace_ids(key: TopicKey) -> set[str]:
        records = read_topic(
            bootstrap, REGISTRY.name(key), until=lambda seen: any(r.key_text == task_id for r in seen)
        )
        return {(r.header("traceparent") or "").split("-")[1] for r in records if r.key_text == task_id}

    per_topic = {
        key: trace_ids(key)
        for key in (TopicKey.DETECT, TopicKey.GENERATE, TopicKey.MATTE, TopicKey.EVENTS, TopicKey.RESULT)
    }
    assert len(set().union(*per_topic.values())) == 1, per_topic
    trace_id = next(iter(per_topic[TopicKey.RESULT]))
    logged = [
        line
        for service in ("detect", "generate", "matte")
        for line in pipeline.paths.log_file(service).read_text().splitlines()
        if task_id in line
    ]
    assert logged and all(trace_id in line for line in logged)


def test_every_service_exports_outcome_counters_latency_and_lag(
    pipeline: LocalPipeline, api: ApiClient, submitter: TopicSubmitter
) -> None:
    request = TaskRequest("watercolor", image=photo_jpeg())
    task_ids = [api.submit(request)["id"], submitter.submit(request)]
    submitter.flush()
    api.wait(task_ids, timeout=120)

    def has(service: str, name: str, **labels: str) -> bool:
        return any(s.name == name and labels.items() <= s.labels.items() for s in pipeline.metrics(service))

    for stage in ("detect", "generate", "matte"):
        assert has(stage, "imgpipe_stage_tasks_total", stage=stage, outcome="completed")
        assert has(stage, "imgpipe_stage_duration_seconds_count", stage=stage)
    for consumer in ("detect", "generate", "matte", "ingest-submit", "ingest-projector"):
        assert has(consumer, "imgpipe_consumer_messages_total", outcome="ok"), consumer
        # librdkafka reports lag with its statistics, every 15 s: a freshly restarted worker has none yet.
        wait_until(functools.partial(has, consumer, "imgpipe_consumer_lag"), 40, f"{consumer} to export lag")
    assert has("ingest-api", "imgpipe_api_submits_total", route="submit", outcome="accepted")


def test_the_demo_ends_with_a_verified_callback_at_its_local_receiver(
    pipeline: LocalPipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    # The test pipeline allows 127.0.0.1/32 for callbacks, as `make up` (ALLOW_LOOPBACK=1) does.
    assert pipeline.callbacks_reach_loopback()
    assert run_demo(pipeline.stack_name) == 0
    out = capsys.readouterr().out
    assert "callback: POST http://127.0.0.1:" in out and "signature verified" in out, out


def test_pipeline_status_speaks_json_for_scripts(pipeline: LocalPipeline) -> None:
    argv = [sys.executable, "-m", "imgpipe.cli", "pipeline", "status", "--name", pipeline.stack_name]
    argv.append("--json")
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    status = json.loads(result.stdout)
    assert (result.returncode, status["ready"]) == (0, True)
    assert set(status["services"]) == set(SERVICES) and set(status["services"].values()) == {"ready"}


def test_the_egress_allow_lists_the_local_pipeline_takes() -> None:
    overrides = egress_overrides(LOOPBACK_NETWORKS)
    assert set(overrides) == {"IMGPIPE_FETCH_ALLOW_NETWORKS", "IMGPIPE_CALLBACK_ALLOW_NETWORKS"}
    policy = EgressPolicy.from_settings(allow_networks=overrides["IMGPIPE_CALLBACK_ALLOW_NETWORKS"])
    assert policy.address_allowed(ip_address("127.0.0.1")) and policy.address_allowed(ip_address("::1"))
    assert not policy.address_allowed(ip_address("10.0.0.1"))
    assert egress_overrides("") == {}
