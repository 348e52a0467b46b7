"""Callback delivery throughput: results published to the result topic until every callback arrived
at local receivers, for 1, 100 and 1,000 URLs, immediate and batched. Usage (after `make up`):

    .venv/bin/python bench/callbacks.py [--results 2000] [--name dev]

Each URL gets a generous policy (rate 1,000/s, burst 1,000; batches of 50 or 200 ms), so the figure
is the service's own capacity rather than a limit. The callback service is restarted with loopback
receivers allowed and restored afterwards. Also printed: how long the old design (one global sender,
one request every 200 ms) needs for the same number of requests.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid

from confluent_kafka import Producer

from imgpipe.contracts.registry import TopicKey, default_registry
from imgpipe.localstack.pipeline import DEMO_TENANT, LocalPipeline
from imgpipe.localstack.waiting import wait_until
from imgpipe.testing.receivers import run_receivers
from imgpipe.v1 import callback_pb2, result_pb2, task_pb2

OLD_SENDER_INTERVAL_SECONDS = 0.2  # the old batch sender: one request every 200 ms, globally


def result(task_id: str, url: str, batched: bool) -> bytes:
    message = result_pb2.TaskResult(
        task_id=task_id,
        tenant_id=DEMO_TENANT,
        state=task_pb2.TASK_STATE_FAILED,  # no result object to presign: measures delivery alone
        error=task_pb2.TaskError(code=task_pb2.ERROR_CODE_NO_PET_DETECTED, message="bench"),
        processing_ms=1,
        callback=task_pb2.CallbackSpec(
            url=url, mode=task_pb2.CALLBACK_MODE_BATCHED if batched else task_pb2.CALLBACK_MODE_IMMEDIATE
        ),
    )
    message.created_at.GetCurrentTime()
    message.completed_at.GetCurrentTime()
    return message.SerializeToString()


def run(pipeline: LocalPipeline, urls: int, results: int, batched: bool) -> dict[str, float | int | str]:
    registry = default_registry()
    producer = Producer({"bootstrap.servers": pipeline.endpoints.kafka_bootstrap_servers, "linger.ms": 5})
    with run_receivers() as receivers:
        targets = [receivers.url(f"/{uuid.uuid4().hex[:8]}") for _ in range(urls)]
        for url in targets:
            policy = callback_pb2.CallbackPolicy(
                key=url, rate_per_second=1000, burst=1000, batch_size=50, max_delay_ms=200
            )
            producer.produce(
                registry.name(TopicKey.CALLBACK_POLICIES), key=url, value=policy.SerializeToString()
            )
        producer.flush(30)
        time.sleep(1)  # the policy reader polls every 0.2 s; let it take the new policies first
        task_ids = [str(uuid.uuid4()) for _ in range(results)]
        started = time.monotonic()
        for i, task_id in enumerate(task_ids):
            producer.produce(
                registry.name(TopicKey.RESULT), key=task_id, value=result(task_id, targets[i % urls], batched)
            )
            producer.poll(0)
        producer.flush(30)
        wait_until(lambda: len(receivers.task_ids()) >= results, 600, "every callback")
        elapsed = time.monotonic() - started
        requests = len(receivers.received)
    return {
        "urls": urls,
        "mode": "batched" if batched else "immediate",
        "callbacks": results,
        "requests": requests,
        "seconds": round(elapsed, 2),
        "callbacks_per_second": round(results / elapsed, 1),
        "old_design_seconds": round(requests * OLD_SENDER_INTERVAL_SECONDS, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=int, default=2000)
    parser.add_argument("--name", default="dev")
    args = parser.parse_args()
    pipeline = LocalPipeline.of_stack(args.name)
    pipeline.stop("callback")
    pipeline.start("callback", {"IMGPIPE_CALLBACK_ALLOW_NETWORKS": "127.0.0.1/32"})
    try:
        rows = [
            run(pipeline, urls, args.results, batched) for batched in (False, True) for urls in (1, 100, 1000)
        ]
    finally:
        pipeline.stop("callback")
        pipeline.start("callback")
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
