"""`imgpipe demo`: sample tasks through the running local pipeline, over HTTP and the submit topic.

Submits scikit-image's photo of a cat (Chelsea) both ways, plus a photo without a pet to show a
permanent failure, waits for all of them, and prints states, timings and where the results are.
When the pipeline may call this machine (`make up`'s default, `pipeline up --allow-loopback`), the
HTTP task names a webhook receiver the demo runs, and the demo shows its signed callback arriving.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from imgpipe.callback.signing import sign
from imgpipe.client import ApiClient, TaskRequest, TopicSubmitter
from imgpipe.contracts.registry import TopicKey, default_registry
from imgpipe.localstack.pipeline import DEMO_TENANT, LocalPipeline
from imgpipe.localstack.waiting import wait_until
from imgpipe.samples import photo_jpeg
from imgpipe.testing.receivers import Received, Receivers, run_receivers

CALLBACK_PATH = "/demo-webhook"
CALLBACK_TIMEOUT = 60.0


@dataclass(frozen=True)
class DemoTask:
    label: str
    via: str
    task_id: str


def run_demo(stack_name: str, timeout: float = 180.0) -> int:
    pipeline = LocalPipeline.of_stack(stack_name)
    with run_receivers() as receivers:
        callback_url = receivers.url(CALLBACK_PATH) if pipeline.callbacks_reach_loopback() else None
        tasks_ok = _run_tasks(pipeline, callback_url, timeout)
        callback_ok = _show_callback(pipeline, receivers) if callback_url else _no_callback_hint()
    return 0 if tasks_ok and callback_ok else 1


def _run_tasks(pipeline: LocalPipeline, callback_url: str | None, timeout: float) -> bool:
    api = ApiClient(pipeline.api_url, pipeline.api_key)
    topic = default_registry().name(TopicKey.SUBMIT)
    submitter = TopicSubmitter(
        {"bootstrap.servers": pipeline.endpoints.kafka_bootstrap_servers}, topic, DEMO_TENANT
    )
    cat, no_pet = photo_jpeg("chelsea"), photo_jpeg("astronaut")
    run = uuid.uuid4().hex[:8]
    started = time.monotonic()
    watercolor = TaskRequest(
        "a watercolor painting", image=cat, idempotency_key=f"demo-{run}-1", callback_url=callback_url
    )
    tasks = [
        DemoTask("cat, watercolor", "http", api.submit(watercolor)["id"]),
        DemoTask(
            "cat, pencil sketch",
            "topic",
            submitter.submit(TaskRequest("pencil sketch", image=cat, idempotency_key=f"demo-{run}-2")),
        ),
        DemoTask(
            "astronaut (no pet)",
            "http",
            api.submit(TaskRequest("pop art", image=no_pet, idempotency_key=f"demo-{run}-3"))["id"],
        ),
    ]
    submitter.flush()
    print(f"submitted {len(tasks)} tasks to {pipeline.api_url} and the submit topic ({topic}); waiting...")
    views = api.wait([task.task_id for task in tasks], timeout)
    print(f"all ended in {time.monotonic() - started:.1f} s\n")
    for task in tasks:
        view = views[task.task_id]
        error = view["error"]
        outcome = view["state"] if error is None else f"{view['state']} ({error['code']}: {error['message']})"
        print(f"{task.label:<20} via {task.via:<5} {task.task_id}  {outcome}")
        print(
            f"{'':<20} processing {view['processing_ms']} ms, created {view['created_at']}, "
            f"completed {view['completed_at']}"
        )
        if view["result_url"]:
            print(f"{'':<20} result: {view['result_url']}")
    expected = {
        "cat, watercolor": "succeeded",
        "cat, pencil sketch": "succeeded",
        "astronaut (no pet)": "failed",
    }
    return all(views[t.task_id]["state"] == expected[t.label] for t in tasks)


def _show_callback(pipeline: LocalPipeline, receivers: Receivers) -> bool:
    """Wait for the watercolor task's webhook and check its Standard Webhooks signature."""
    try:
        request = wait_until(
            lambda: receivers.requests_to(CALLBACK_PATH), CALLBACK_TIMEOUT, "the demo's callback"
        )[0]
    except TimeoutError:
        print(f"\nno callback reached {receivers.url(CALLBACK_PATH)} within {CALLBACK_TIMEOUT:.0f} s")
        return False
    api = ApiClient(pipeline.api_url, pipeline.api_key)
    verified = _signature_verifies(request, api.webhook_secrets())
    item = request.items[0]
    print(
        f"\ncallback: POST {receivers.url(request.path)}, webhook-id {request.headers['webhook-id']}, "
        f"task {item['task_id']} {item['state']}, signature {'verified' if verified else 'INVALID'}"
    )
    return verified


def _signature_verifies(request: Received, secrets: Sequence[str]) -> bool:
    headers = request.headers
    timestamp = int(headers["webhook-timestamp"])
    given = set(headers["webhook-signature"].split())
    return any(sign(secret, headers["webhook-id"], timestamp, request.body) in given for secret in secrets)


def _no_callback_hint() -> bool:
    print(
        "\ncallbacks: not shown; the pipeline's SSRF guard refuses this machine.\n"
        "`make up ALLOW_LOOPBACK=1` (or `imgpipe pipeline up --allow-loopback`) lets it call a receiver here."
    )
    return True
