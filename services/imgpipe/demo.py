"""`imgpipe demo`: sample tasks through the running local pipeline, over HTTP and the submit topic.

Submits scikit-image's photo of a cat (Chelsea) both ways, plus a photo without a pet to show a
permanent failure, waits for all of them, and prints states, timings and where the results are.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from imgpipe.client import ApiClient, TaskRequest, TopicSubmitter
from imgpipe.contracts.registry import TopicKey, default_registry
from imgpipe.localstack.pipeline import DEMO_TENANT, LocalPipeline
from imgpipe.samples import photo_jpeg


@dataclass(frozen=True)
class DemoTask:
    label: str
    via: str
    task_id: str


def run_demo(stack_name: str, timeout: float = 180.0) -> int:
    pipeline = LocalPipeline.of_stack(stack_name)
    api = ApiClient(pipeline.api_url, pipeline.api_key)
    topic = default_registry().name(TopicKey.SUBMIT)
    submitter = TopicSubmitter(
        {"bootstrap.servers": pipeline.endpoints.kafka_bootstrap_servers}, topic, DEMO_TENANT
    )
    cat, no_pet = photo_jpeg("chelsea"), photo_jpeg("astronaut")
    run = uuid.uuid4().hex[:8]
    started = time.monotonic()
    tasks = [
        DemoTask(
            "cat, watercolor",
            "http",
            api.submit(TaskRequest("a watercolor painting", image=cat, idempotency_key=f"demo-{run}-1"))[
                "id"
            ],
        ),
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
    return 0 if all(views[t.task_id]["state"] == expected[t.label] for t in tasks) else 1
