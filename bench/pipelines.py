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

Three workloads (a record's `workload`), each with the stages on other model backends:

- local-cpu: the stages' CPU algorithms in process (the default backends);
- remote-model: the HTTP backends against a simulated model server (ModelServer: each call holds
  one of `slots` for `service_time` seconds and burns no CPU), so the bound is
  slots / service_time tasks/s (every stage makes one call per task, each model has its own slots);
- null: no model work at all (backends/null.py), so CPU per task is the platform's own cost.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import httpx

from bench.measure import ProcessSampler, Progress, latency_summary, throughput
from imgpipe.localstack.waiting import wait_until
from imgpipe.objects import ObjectStore
from imgpipe.stages.detect import DetectWork
from imgpipe.stages.generate import GenerateWork
from imgpipe.stages.matte import MatteWork
from imgpipe.stages.runner import StageWork, store_artifact
from imgpipe.stages.settings import StageSettings
from imgpipe.v1 import task_pb2

PROMPTS = ("a watercolor painting", "pencil sketch", "cartoon", "vintage sepia photo", "pop art")
WORKLOADS = ("local-cpu", "remote-model", "null")  # a record's `workload`: the stages' model backends
STAGE_BACKENDS = ("IMGPIPE_DETECT_BACKEND", "IMGPIPE_GENERATE_BACKEND", "IMGPIPE_MATTE_BACKEND")
STAGE_URLS = ("IMGPIPE_DETECT_URL", "IMGPIPE_GENERATE_URL", "IMGPIPE_MATTE_URL")
# remote-model: requests in flight per process and model server (ResilientHttpClient's semaphore),
# the same for both systems and above the server's slots, so the server, not the client, bounds.
MODEL_MAX_CONCURRENCY = 16
# remote-model: messages each imgpipe stage handles at once (threads), as many as it may send.
REMOTE_STAGE_MAX_IN_FLIGHT = 16


def remote_model_settings(url: str) -> dict[str, str]:
    """Stage settings (both systems) for the HTTP backends against the model server at `url`."""
    settings = {name: "http" for name in STAGE_BACKENDS} | {name: url for name in STAGE_URLS}
    return settings | {"IMGPIPE_MODEL_MAX_CONCURRENCY": str(MODEL_MAX_CONCURRENCY)}


def null_settings() -> dict[str, str]:
    """Stage settings (both systems) for the null backends: no model work."""
    return {name: "null" for name in STAGE_BACKENDS}


@dataclass(frozen=True)
class Workload:
    scenario: str  # "burst" or "steady"
    tasks: int
    rate_per_second: float | None = None  # steady only
    workload: str = "local-cpu"  # one of WORKLOADS

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
        "workload": workload.workload,
        "system": system.name,
        "config": getattr(system, "config", None),
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


def warm_up(system: System, image: bytes, tasks: int) -> None:
    """Some unmeasured tasks through a system just started: its consumers joined their groups, its
    pool processes loaded their stages and its connections are open before a run is timed."""
    ids = [system.submit(index, image) for index in range(tasks)]
    system.flush()
    system.completions(ids, timeout=600.0)


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

    def __init__(self, pipeline: Any, pids: Callable[[], Iterable[int]], config: str | None = None) -> None:
        """`config`: how the services were started, for the record (e.g. their max in flight)."""
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
        self.config = config

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
        self.config = f"{baseline.pool} x {baseline.concurrency}"

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


# -- the simulated model server (remote-model) ---------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class ModelServer:
    """`imgpipe model-server --simulate` on a free loopback port: every model call holds one of the
    model's `slots` for `service_time` seconds and answers real protocol responses."""

    def __init__(self, log_path: Any, service_time: float = 0.25, slots: int = 4) -> None:
        self.service_time = service_time
        self.slots = slots
        self.port = _free_port()
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def bound_tasks_per_second(self) -> float:
        """Each stage's model serves slots / service_time calls/s, and a task makes one per stage."""
        return self.slots / self.service_time

    def facts(self) -> dict[str, Any]:
        return {"simulated": True, "service_time_seconds": self.service_time, "slots": self.slots}

    def start(self) -> None:
        argv = [sys.executable, "-m", "imgpipe.cli", "model-server", "--simulate"]
        argv += [
            "--service-time",
            str(self.service_time),
            "--slots",
            str(self.slots),
            "--port",
            str(self.port),
        ]
        with open(self._log_path, "ab") as log:
            self._process = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
        wait_until(self._ready, 60.0, f"the model server on {self.url}")

    def _ready(self) -> bool:
        assert self._process is not None
        if self._process.poll() is not None:
            raise RuntimeError(f"the model server exited while starting; see {self._log_path}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    def __enter__(self) -> ModelServer:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


# -- the baseline started for one run (remote-model, null) ----------------------------------------


class CeleryRun:
    """A Celery baseline configuration started for each run and stopped after it, so several
    configurations (pools, concurrencies) take turns without idling beside each other."""

    def __init__(
        self,
        workdir: Any,
        database_url: str,
        postgres_pids: Callable[[], Iterable[int]],
        pool: str,
        concurrency: int,
        settings: Mapping[str, str],
    ) -> None:
        self._args = (workdir, database_url, postgres_pids)
        self.pool = pool
        self.concurrency = concurrency
        self.settings = dict(settings)
        self.config = f"{pool} x {concurrency}"
        self.name = Celery.name

    def start(self) -> Celery:
        from bench.baselines.celery_redis.harness import CeleryBaseline

        workdir, database_url, postgres_pids = self._args
        self._baseline = CeleryBaseline(
            workdir / f"celery-{self.pool}-{self.concurrency}",
            database_url,
            concurrency=self.concurrency,
            pool=self.pool,
            settings=self.settings,
        )
        self._baseline.start()
        return Celery(self._baseline, postgres_pids)

    def stop(self) -> None:
        self._baseline.stop()
