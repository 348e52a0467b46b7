"""End-to-end throughput and latency of N tasks through the running local pipeline (`make up`).

Half the tasks go over HTTP, half over the submit topic, all with scikit-image's cat photo. Latency
is a task's completed_at - created_at as the task store records it; throughput is N over the time
from the first submit to the last completion. Usage:

    .venv/bin/python bench/end_to_end.py --tasks 200 [--name dev]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from datetime import datetime

from imgpipe.client import ApiClient, TaskRequest, TopicSubmitter
from imgpipe.contracts.registry import TopicKey, default_registry
from imgpipe.localstack.pipeline import DEMO_TENANT, LocalPipeline
from imgpipe.samples import photo_jpeg

PROMPTS = ("a watercolor painting", "pencil sketch", "cartoon", "vintage sepia photo", "pop art")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--name", default="dev", help="the local stack `make up` started")
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()

    pipeline = LocalPipeline.of_stack(args.name)
    api = ApiClient(pipeline.api_url, pipeline.api_key)
    submitter = TopicSubmitter(
        {"bootstrap.servers": pipeline.endpoints.kafka_bootstrap_servers},
        default_registry().name(TopicKey.SUBMIT),
        DEMO_TENANT,
    )
    cat, run = photo_jpeg(), uuid.uuid4().hex[:8]
    started = time.time()
    task_ids = []
    for i in range(args.tasks):
        request = TaskRequest(PROMPTS[i % len(PROMPTS)], image=cat, idempotency_key=f"bench-{run}-{i}")
        task_ids.append(api.submit(request)["id"] if i % 2 == 0 else submitter.submit(request))
    submitter.flush()
    views = api.wait(task_ids, args.timeout)

    states = [view["state"] for view in views.values()]
    created = [datetime.fromisoformat(v["created_at"]).timestamp() for v in views.values()]
    completed = [datetime.fromisoformat(v["completed_at"]).timestamp() for v in views.values()]
    latencies = [done - begun for begun, done in zip(created, completed, strict=True)]
    elapsed = max(completed) - started
    print(
        json.dumps(
            {
                "tasks": args.tasks,
                "succeeded": states.count("succeeded"),
                "elapsed_seconds": round(elapsed, 2),
                "tasks_per_second": round(args.tasks / elapsed, 2),
                "latency_p50_seconds": round(percentile(latencies, 0.50), 2),
                "latency_p99_seconds": round(percentile(latencies, 0.99), 2),
                "processing_ms_mean": round(statistics.mean(v["processing_ms"] for v in views.values())),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
