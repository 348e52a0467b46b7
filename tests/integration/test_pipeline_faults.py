"""The pipeline under outside faults: hostile image URLs (SSRF) and a model server that goes away."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import httpx
import pytest

from imgpipe.client import ApiClient, TaskRequest
from imgpipe.contracts.registry import default_registry
from imgpipe.localstack.pipeline import LocalPipeline
from imgpipe.localstack.ports import assign_ports
from imgpipe.localstack.processes import PidRecord, ProcessSpec, spawn, stop
from imgpipe.localstack.waiting import wait_until
from imgpipe.runtime.kafka import RETRY_GROUP_HEADER, Received
from imgpipe.samples import photo_jpeg
from imgpipe.testing.http import ALLOWED_IMAGE_HOST, Reply, serve
from imgpipe.testing.kafka import read_topic

pytestmark = pytest.mark.integration

REGISTRY = default_registry()


@pytest.mark.timeout(300)
def test_ssrf_attempts_fail_the_task_without_any_connection_to_the_target(api: ApiClient) -> None:
    with serve({"/": Reply(body=b"internal admin page")}) as internal:  # 127.0.0.1: must stay unreached
        redirect = {"/cat.jpg": Reply(302, headers={"Location": internal.url("/")})}
        with serve(redirect, host=ALLOWED_IMAGE_HOST) as allowed:
            hostile_urls = [
                internal.url("/"),
                f"http://localhost:{internal.port}/",  # a name that resolves to loopback
                "http://169.254.169.254/latest/meta-data/",  # cloud metadata
                "http://10.0.0.1/image.jpg",
                "http://[::1]/image.jpg",
                allowed.url("/cat.jpg"),  # an allowed host redirecting to a private address
            ]
            tasks = [api.submit(TaskRequest("x", image_url=url))["id"] for url in hostile_urls]
            views = api.wait(tasks, timeout=120)
            redirect_followed = allowed.connections

    for url, task_id in zip(hostile_urls, tasks, strict=True):
        view = views[task_id]
        assert (view["state"], view["error"]["code"]) == ("failed", "fetch_failed"), (url, view)
    assert internal.connections == 0
    assert redirect_followed == 1  # the allowed first hop was fetched; its redirect was refused


@contextmanager
def model_server(pipeline: LocalPipeline, port: int) -> Iterator[PidRecord]:
    log = pipeline.paths.log_file("model-server")
    pid = pipeline.paths.pid_file("model-server")
    argv = (sys.executable, "-m", "imgpipe.cli", "model-server", "--host", "127.0.0.1", "--port", str(port))
    record = spawn(ProcessSpec(argv=argv), log, pid)
    try:
        wait_until(lambda: _ready(port), 60, "the model server to be ready")
        yield record
    finally:
        stop(record, signal.SIGKILL, 5, "model server")


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def stage_over_http(pipeline: LocalPipeline, stage: str, url: str, model: str) -> Iterator[None]:
    """Restart a stage with its HTTP backend; back to the local backend afterwards."""
    pipeline.stop(stage)
    settings = {
        f"IMGPIPE_{stage.upper()}_BACKEND": "http",
        f"IMGPIPE_{stage.upper()}_URL": url,
        f"IMGPIPE_{stage.upper()}_MODEL": model,
        "IMGPIPE_MODEL_MAX_RETRIES": "1",
        "IMGPIPE_MODEL_BACKOFF_SECONDS": "0.1",
        "IMGPIPE_MODEL_BREAKER_RESET_SECONDS": "2",
    }
    pipeline.start(stage, settings)
    try:
        yield
    finally:
        pipeline.stop(stage)
        pipeline.start(stage)


def _waiting_for_retry(bootstrap: str, task_ids: Sequence[str]) -> bool:
    """Whether every task has a copy in the first retry tier meant for matte."""
    tier = REGISTRY.retry_tiers()[0].name

    def all_parked(seen: Sequence[Received]) -> bool:
        parked = {r.key_text for r in seen if r.header(RETRY_GROUP_HEADER) == "imgpipe.matte"}
        return parked >= set(task_ids)

    read_topic(bootstrap, tier, until=all_parked, timeout=120)
    return True


@pytest.mark.timeout(600)
def test_model_server_down_for_a_while_then_back_tasks_wait_and_succeed(
    pipeline: LocalPipeline, api: ApiClient, unused_port: int
) -> None:
    cat = photo_jpeg()
    url = f"http://127.0.0.1:{unused_port}"
    with stage_over_http(pipeline, "matte", url, "u2net"):
        with model_server(pipeline, unused_port) as server:
            first = api.submit(TaskRequest("watercolor", image=cat))["id"]
            assert api.wait([first], timeout=120)[first]["state"] == "succeeded"
            stop(server, signal.SIGKILL, 5, "model server")

        tasks = [api.submit(TaskRequest("watercolor", image=cat))["id"] for _ in range(4)]
        _waiting_for_retry(pipeline.endpoints.kafka_bootstrap_servers, tasks)
        assert all(api.get(t)["state"] == "processing" for t in tasks)  # waiting, not failed

        with model_server(pipeline, unused_port):
            views = api.wait(tasks, timeout=300)
    assert {view["state"] for view in views.values()} == {"succeeded"}


@pytest.mark.timeout(300)
def test_a_model_server_refusing_the_request_fails_the_task_with_model_error(
    pipeline: LocalPipeline, api: ApiClient, unused_port: int
) -> None:
    url = f"http://127.0.0.1:{unused_port}"
    with model_server(pipeline, unused_port), stage_over_http(pipeline, "detect", url, "no-such-model"):
        task = api.submit(TaskRequest("watercolor", image=photo_jpeg()))["id"]
        view = api.wait([task], timeout=120)[task]
    assert (view["state"], view["error"]["code"], view["stage"]) == ("failed", "model_error", "detect")


@pytest.fixture
def unused_port() -> int:
    return assign_ports(["model-server"], {})["model-server"]
