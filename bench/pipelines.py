"""The same workload through three systems: the compute bound, imgpipe on the local stack, and the
Celery + Redis baseline.

A workload is N tasks (the scikit-image cat photo, prompts in turn) arriving all at once (burst) or
at a steady rate. For every task the client notes when it submitted it; latency is the task's
completion time (as the system records it) minus that, so queueing in front of a busy system counts.
Throughput is N over the time from the first submit to the last completion. CPU seconds and peak
memory cover every process of the system: for imgpipe its services and Kafka, Postgres and MinIO;
for the baseline redis-server, the Celery worker and its pool, the callback sender and Postgres; for
the compute bound the pool's processes.

imgpipe's tasks go in over the Kafka submit topic, as the baseline's go straight onto its Redis queue:
neither goes through an HTTP API here (bench/ingest.py measures that door).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from bench.measure import ProcessSampler, Progress, latency_summary, throughput
from imgpipe.objects import ObjectStore
from imgpipe.stages.detect import DetectWork
from imgpipe.stages.generate import GenerateWork
from imgpipe.stages.matte import MatteWork
from imgpipe.stages.runner import StageWork, store_artifact
from imgpipe.stages.settings import StageSettings
from imgpipe.v1 import task_pb2

PROMPTS = ("a watercolor painting", "pencil sketch", "cartoon", "vintage sepia photo", "pop art")


@dataclass(frozen=True)
class Workload:
    scenario: str  # "burst" or "steady"
    tasks: int
    rate_per_second: float | None = None  # steady only

    def arrival_offsets(self) -> list[float]:
        """Seconds after the start at which each task is submitted."""
        if self.rate_per_second is None:
            return [0.0] * self.tasks
        return [i / self.rate_per_second for i in range(self.tasks)]

    def describe(self) -> str:
        if self.rate_per_second is None:
            return f"burst of {self.tasks}"
        return f"{self.tasks} at {self.rate_per_second:g}/s"


class System(Protocol):
    """What a workload needs of a system under test."""

    name: str

    def pids(self) -> Iterable[int]: ...

    def submit(self, index: int, image: bytes) -> str: ...

    def flush(self) -> None: ...

    def completions(self, ids: Sequence[str], timeout: float) -> dict[str, tuple[str, float]]:
        """Wait until every task ended: id -> (state, completion time as epoch seconds)."""
        ...


def run_workload(system: System, workload: Workload, image: bytes, progress: Progress) -> dict[str, Any]:
    """Submit the workload on its schedule, wait for every task, and measure."""
    submitted: dict[str, float] = {}
    with ProcessSampler(system.pids) as sampler:
        started = time.time()
        for index, offset in enumerate(workload.arrival_offsets()):
            # Pacing the arrival schedule, not waiting for a result.
            delay = started + offset - time.time()
            if delay > 0:
                time.sleep(delay)
            submitted[system.submit(index, image)] = time.time()
            progress.advance(0.5)
        system.flush()
        ended = system.completions(list(submitted), timeout=max(600.0, 20.0 * workload.tasks))
        progress.advance(0.5 * workload.tasks)
    states = [state for state, _ in ended.values()]
    latencies = [ended[task_id][1] - at for task_id, at in submitted.items()]
    last = max(done for _, done in ended.values())
    return {
        "kind": "pipeline",
        "system": system.name,
        "scenario": workload.scenario,
        "tasks": workload.tasks,
        "rate_per_second": workload.rate_per_second,
        "succeeded": states.count("succeeded"),
        "tasks_per_second": throughput(workload.tasks, last - started),
        "latency_seconds": latency_summary(latencies),
        "cpu_seconds_per_task": sampler.cpu_seconds / workload.tasks,
        "peak_rss_mib": sampler.peak_rss_bytes / 2**20,
        "cpu_seconds_by_process": sampler.cpu_seconds_by_name(),
    }


# -- the compute bound ---------------------------------------------------------------------------


class MemoryObjects(ObjectStore):
    """Objects in a dict: the compute bound leaves storage out on purpose."""

    def __init__(self) -> None:
        self._objects: dict[str, bytes] = {}

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self._objects[key] = data

    def get(self, key: str) -> bytes:
        return self._objects[key]


class StageChain:
    """detect -> generate -> matte as the services run them, artifacts handed on in memory."""

    def __init__(self) -> None:
        settings = StageSettings()
        self.stages: dict[str, StageWork] = {
            "detect": DetectWork.from_settings(settings),
            "generate": GenerateWork.from_settings(settings),
            "matte": MatteWork.from_settings(settings),
        }

    def run(self, index: int, original: bytes) -> None:
        objects = MemoryObjects()
        task_id = f"bench-{index}"
        objects.put(f"{task_id}/original", original, "image/jpeg")
        envelope = task_pb2.TaskEnvelope(task_id=task_id, prompt=PROMPTS[index % len(PROMPTS)])
        envelope.source.object_key = f"{task_id}/original"
        for name, work in self.stages.items():
            output = work.run(envelope, objects)
            envelope.artifacts[name].CopyFrom(store_artifact(objects, task_id, name, output))


_stages: StageChain | None = None  # the pool process's stages, built once by _load_stages


def _load_stages() -> None:
    global _stages
    _stages = StageChain()


def _run_in_pool(index: int, image: bytes) -> tuple[str, float]:
    assert _stages is not None, "the pool's initializer builds the stages"
    _stages.run(index, image)
    return "succeeded", time.time()


class ComputeBound:
    """The stage functions in one process pool (one process per core): no Kafka, S3 or Postgres."""

    name = "compute-bound"

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or os.cpu_count() or 1
        self._pool = ProcessPoolExecutor(self.workers, initializer=_load_stages)
        self._futures: dict[str, Future[tuple[str, float]]] = {}
        # One task per process before anything is measured: starts them and loads their stages.
        from imgpipe.samples import photo_jpeg

        list(self._pool.map(_run_in_pool, range(self.workers), [photo_jpeg()] * self.workers))

    def pids(self) -> list[int]:
        return list(self._pool._processes)

    def submit(self, index: int, image: bytes) -> str:
        task_id = str(uuid.uuid4())
        self._futures[task_id] = self._pool.submit(_run_in_pool, index, image)
        return task_id

    def flush(self) -> None:
        pass

    def completions(self, ids: Sequence[str], timeout: float) -> dict[str, tuple[str, float]]:
        return {task_id: self._futures.pop(task_id).result(timeout) for task_id in ids}

    def close(self) -> None:
        self._pool.shutdown()


# -- imgpipe -------------------------------------------------------------------------------------


class Imgpipe:
    """imgpipe's services on a local stack, tasks submitted over the Kafka submit topic."""

    name = "imgpipe"

    def __init__(self, pipeline: Any, pids: Callable[[], Iterable[int]]) -> None:
        from imgpipe.client import ApiClient, TopicSubmitter
        from imgpipe.contracts.registry import TopicKey, default_registry
        from imgpipe.localstack.pipeline import DEMO_TENANT

        self._api = ApiClient(pipeline.api_url, pipeline.api_key)
        self._submitter = TopicSubmitter(
            {"bootstrap.servers": pipeline.endpoints.kafka_bootstrap_servers},
            default_registry().name(TopicKey.SUBMIT),
            DEMO_TENANT,
        )
        self._pids = pids

    def pids(self) -> Iterable[int]:
        return self._pids()

    def submit(self, index: int, image: bytes) -> str:
        from imgpipe.client import TaskRequest

        request = TaskRequest(PROMPTS[index % len(PROMPTS)], image=image, idempotency_key=str(uuid.uuid4()))
        task_id: str = self._submitter.submit(request)
        return task_id

    def flush(self) -> None:
        self._submitter.flush()

    def completions(self, ids: Sequence[str], timeout: float) -> dict[str, tuple[str, float]]:
        views = self._api.wait(list(ids), timeout)
        return {
            task_id: (view["state"], datetime.fromisoformat(view["completed_at"]).timestamp())
            for task_id, view in views.items()
        }

    def close(self) -> None:
        self._api.close()


# -- the Celery + Redis baseline ------------------------------------------------------------------


class Celery:
    """The old architecture (bench/baselines/celery_redis) on the same Postgres."""

    name = "celery-redis"

    def __init__(self, baseline: Any, postgres_pids: Callable[[], Iterable[int]]) -> None:
        self._baseline = baseline
        self._postgres_pids = postgres_pids

    def pids(self) -> list[int]:
        return [*self._baseline.pids(), *self._postgres_pids()]

    def submit(self, index: int, image: bytes) -> str:
        task_id: str = self._baseline.submit(PROMPTS[index % len(PROMPTS)], image)
        return task_id

    def flush(self) -> None:
        pass

    def completions(self, ids: Sequence[str], timeout: float) -> dict[str, tuple[str, float]]:
        outcomes = self._baseline.wait(list(ids), timeout)
        return {task_id: (done.state, done.completed_at.timestamp()) for task_id, done in outcomes.items()}
