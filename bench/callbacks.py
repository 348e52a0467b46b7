"""Callback delivery: callbacks per second to local receivers for 1, 100 and 1,000 URLs, immediate
and batched, through imgpipe's callback service and through the old design's sender.

Every receiver has a limit (`--limit` requests per second, the same as burst): imgpipe is given it
as each URL's policy; the old sender has no per-URL limits (one request every 200 ms for the whole
system). Reported per run: callbacks/s (callbacks over the time from the first result published to
the last callback received), requests, and the share of receivers that ever got more than their
limit within one second.

imgpipe: results (failed tasks, so nothing is presigned and delivery alone is measured) published
to the result topic of a running pipeline. The old sender: the same callbacks pushed onto its Redis
list, drained by one `OldCallbackSender` (bench/baselines/celery_redis); it is stopped after
`--old-seconds` when it would take longer to finish, and its rate is then what it sent until then.

    .venv/bin/python -m bench.callbacks [--results 1000] [--name bench]   (after `imgpipe pipeline up`)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import redis
from confluent_kafka import Producer

from bench.baselines.celery_redis.redis_server import RedisServer
from bench.baselines.celery_redis.sender import OldCallbackSender
from bench.measure import Progress
from imgpipe.contracts.registry import TopicKey, default_registry
from imgpipe.localstack.pipeline import DEMO_TENANT, LocalPipeline
from imgpipe.localstack.waiting import wait_until
from imgpipe.testing.callbacks import set_policies
from imgpipe.testing.receivers import Receivers, run_receivers
from imgpipe.v1 import callback_pb2, result_pb2, task_pb2

URL_COUNTS = (1, 100, 1000)
MODES = ("immediate", "batched")


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


def record(
    system: str,
    receivers: Receivers,
    paths: list[str],
    callbacks: int,
    seconds: float,
    limit: int,
    **extra: Any,
) -> dict[str, Any]:
    delivered = len(receivers.task_ids())
    # A token bucket of rate `limit` and burst `limit` allows up to 2 x limit within one second.
    exceeded = sum(1 for path in paths if receivers.busiest_second(path) > 2 * limit)
    return {
        "kind": "callbacks",
        "system": system,
        "urls": len(paths),
        "callbacks": callbacks,
        "delivered": delivered,
        "requests": len(receivers.received),
        "seconds": seconds,
        "callbacks_per_second": delivered / seconds,
        "receiver_limit_per_second": limit,
        "share_of_receivers_over_limit": exceeded / len(paths),
        **extra,
    }


def run_imgpipe(pipeline: LocalPipeline, urls: int, callbacks: int, mode: str, limit: int) -> dict[str, Any]:
    registry = default_registry()
    batched = mode == "batched"
    producer = Producer({"bootstrap.servers": pipeline.endpoints.kafka_bootstrap_servers, "linger.ms": 5})
    with run_receivers() as receivers:
        paths = [f"/{uuid.uuid4().hex[:8]}" for _ in range(urls)]
        set_policies(
            pipeline,
            {
                receivers.url(path): callback_pb2.CallbackPolicy(
                    key=receivers.url(path),
                    rate_per_second=limit,
                    burst=limit,
                    batch_size=50,
                    max_delay_ms=200,
                )
                for path in paths
            },
        )
        started = time.monotonic()
        for i in range(callbacks):
            task_id = str(uuid.uuid4())
            url = receivers.url(paths[i % urls])
            producer.produce(registry.name(TopicKey.RESULT), key=task_id, value=result(task_id, url, batched))
            producer.poll(0)
        producer.flush(30)
        wait_until(lambda: len(receivers.task_ids()) >= callbacks, 900, "every callback")
        seconds = max(r.at for r in receivers.received) - started
        return record("imgpipe", receivers, paths, callbacks, seconds, limit, mode=mode)


def run_old_sender(
    redis_url: str, urls: int, callbacks: int, mode: str, limit: int, cap_seconds: float
) -> dict[str, Any]:
    redis.Redis.from_url(redis_url).flushall()  # what a capped run left queued is not this run's load
    with run_receivers() as receivers:
        paths = [f"/{uuid.uuid4().hex[:8]}" for _ in range(urls)]
        sender = OldCallbackSender(redis_url)
        for i in range(callbacks):
            task_id = str(uuid.uuid4())
            payload = {"task_id": task_id, "state": "failed", "error_code": "no_pet_detected"}
            sender.enqueue(
                receivers.url(paths[i % urls]), payload, task_id=task_id, batched=mode == "batched"
            )
        stop = threading.Event()
        drainer = threading.Thread(target=sender.run, args=(stop,), name="old-sender", daemon=True)
        started = time.monotonic()
        drainer.start()
        try:
            wait_until(lambda: len(receivers.task_ids()) >= callbacks, cap_seconds, "every callback")
            finished = True
        except TimeoutError:
            finished = False
        stop.set()
        drainer.join(timeout=30)
        sender.close()
        seconds = (max(r.at for r in receivers.received) if finished else time.monotonic()) - started
        return record(
            "celery-redis", receivers, paths, callbacks, seconds, limit, mode=mode, finished=finished
        )


def run_all(
    pipeline: LocalPipeline, workdir: Path, callbacks: int, limit: int, old_seconds: float, progress: Progress
) -> list[dict[str, Any]]:
    """Every URL count and mode for both systems; the callback service allows loopback receivers
    for the run and is restored afterwards."""
    rows = []
    pipeline.stop("callback")
    pipeline.start("callback", {"IMGPIPE_CALLBACK_ALLOW_NETWORKS": "127.0.0.1/32"})
    try:
        with RedisServer.start(workdir / "redis-callbacks") as redis_server:
            for mode in MODES:
                for urls in URL_COUNTS:
                    count = max(callbacks, urls)
                    progress.describe(f"callbacks: imgpipe, {urls} URLs, {mode}")
                    rows.append(run_imgpipe(pipeline, urls, count, mode, limit))
                    progress.advance()
                    progress.describe(f"callbacks: old sender, {urls} URLs, {mode}")
                    rows.append(run_old_sender(redis_server.url, urls, count, mode, limit, old_seconds))
                    progress.advance()
    finally:
        pipeline.stop("callback")
        pipeline.start("callback")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=int, default=1000, help="callbacks per run (at least one per URL)")
    parser.add_argument("--limit", type=int, default=20, help="each receiver's requests per second")
    parser.add_argument("--old-seconds", type=float, default=60, help="cap on one run of the old sender")
    parser.add_argument("--name", default="bench", help="the local stack the pipeline runs on")
    args = parser.parse_args()
    pipeline = LocalPipeline.of_stack(args.name)
    with (
        tempfile.TemporaryDirectory() as workdir,
        Progress(len(URL_COUNTS) * len(MODES) * 2, "callbacks") as bar,
    ):
        rows = run_all(pipeline, Path(workdir), args.results, args.limit, args.old_seconds, bar)
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
