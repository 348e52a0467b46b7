"""The stage process pool: how many workers, errors across the process boundary, a worker that dies."""

from __future__ import annotations

import os
import pickle
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from imgpipe.imaging import errors as imaging_errors
from imgpipe.imaging.errors import (
    ImageTooLarge,
    InvalidImage,
    ModelError,
    NoPetDetected,
    PipelineError,
    UnsupportedFormat,
)
from imgpipe.localstack.waiting import wait_until
from imgpipe.netguard.errors import EgressRefused, FetchFailed, ResponseTooLarge
from imgpipe.objects import ObjectStore, ObjectStoreError
from imgpipe.runtime.errors import PoisonMessage, TransientError
from imgpipe.stages.pool import PooledWork, WorkerError, cgroup_cpu_quota, portable, resolve_workers
from imgpipe.stages.runner import StageOutput, TaskFailed, permanent_code
from imgpipe.stages.settings import StageSettings
from imgpipe.v1 import task_pb2

pytestmark = pytest.mark.unit

# -- worker count -----------------------------------------------------------------------------


def _cgroup(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        ({}, None),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "200000 100000\n"}, 2.0),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 0.5),
        ({"cpu,cpuacct/cpu.cfs_quota_us": "300000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, 3.0),
    ],
)
def test_the_cgroup_quota_is_read_from_v2_or_v1(
    tmp_path: Path, files: dict[str, str], quota: float | None
) -> None:
    assert cgroup_cpu_quota(_cgroup(tmp_path, files)) == quota


def test_workers_default_to_the_cpus_of_the_affinity_mask(tmp_path: Path) -> None:
    assert resolve_workers(None, tmp_path) == len(os.sched_getaffinity(0))


def test_a_smaller_cgroup_quota_caps_the_workers_rounded_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(8)))
    assert resolve_workers(None, _cgroup(tmp_path, {"cpu.max": "250000 100000"})) == 3
    assert resolve_workers(None, _cgroup(tmp_path, {"cpu.max": "10000 100000"})) == 1
    assert (
        resolve_workers(None, _cgroup(tmp_path, {"cpu.max": "1600000 100000"})) == 8
    )  # more quota than CPUs


def test_a_configured_worker_count_wins(tmp_path: Path) -> None:
    assert resolve_workers(5, _cgroup(tmp_path, {"cpu.max": "100000 100000"})) == 5
    assert StageSettings(stage_workers=2).stage_workers == 2
    assert StageSettings().stage_workers is None


# -- errors across the process boundary ---------------------------------------------------------

ERRORS: list[BaseException] = [
    TaskFailed("invalid_image", "task names no image"),
    InvalidImage("truncated"),
    UnsupportedFormat("GIF"),
    ImageTooLarge("too many pixels"),
    NoPetDetected("nothing"),
    ModelError("server down"),
    ModelError("bad output", retryable=False),
    EgressRefused("private address"),
    FetchFailed("503 from host", retryable=True, status=503, headers={"Retry-After": "2"}),
    FetchFailed("no such host", retryable=False),
    ResponseTooLarge("over the cap"),
    ObjectStoreError("put: timeout"),
    TransientError("later"),
    PoisonMessage("never"),
    WorkerError("Weird", "it broke", code="model_error", retryable=True),
]


def _attributes(exc: BaseException) -> dict[str, object]:
    return {
        "type": type(exc),
        "str": str(exc),
        "args": exc.args,
        **{k: (dict(v) if k == "headers" else v) for k, v in vars(exc).items()},
        "code": getattr(exc, "code", None),
        "retryable": getattr(exc, "retryable", None),
        "permanent_code": permanent_code(exc),
    }


@pytest.mark.parametrize("exc", ERRORS, ids=lambda e: f"{type(e).__name__}-{e}")
def test_every_error_a_stage_raises_survives_pickling_intact(exc: BaseException) -> None:
    copy = pickle.loads(pickle.dumps(exc))
    assert _attributes(copy) == _attributes(exc)
    assert portable(exc) is exc


def _subclasses(cls: type[BaseException]) -> set[type[BaseException]]:
    found = set(cls.__subclasses__())
    return found.union(*(_subclasses(sub) for sub in found))


def test_every_error_class_with_a_code_is_in_the_pickling_test() -> None:
    assert imaging_errors.PipelineError is PipelineError
    tested = {type(exc) for exc in ERRORS}
    untested = {cls for cls in _subclasses(PipelineError) if cls.__module__.startswith("imgpipe.")} - tested
    assert not untested


class _Unpicklable(Exception):
    code = "model_error"
    retryable = True

    def __init__(self, message: str, extra: object) -> None:
        super().__init__(message)
        self.extra = extra


def test_an_error_that_does_not_pickle_crosses_as_a_worker_error_with_its_code() -> None:
    exc = _Unpicklable("backend fell over", extra=lambda: None)
    carried = portable(exc)
    assert isinstance(carried, WorkerError)
    assert (carried.code, carried.retryable, str(carried)) == (
        "model_error",
        True,
        "_Unpicklable: backend fell over",
    )
    assert permanent_code(carried) == "model_error"


# -- the pool, with a stage work that needs no object store ----------------------------------------


class _FakeWork:
    """Marks the envelope with its pid (as detect writes the pet), fails on request, or dies."""

    stage = task_pb2.STAGE_DETECT

    def run(self, envelope: task_pb2.TaskEnvelope, objects: ObjectStore) -> StageOutput:
        if envelope.prompt == "fail":
            raise TaskFailed("no_pet_detected", "no pet here")
        if envelope.prompt == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        envelope.metadata["pid"] = str(os.getpid())
        return StageOutput(envelope.prompt.encode(), "image/png", "png", 1, 1)


def _fake_work(_settings: StageSettings) -> _FakeWork:
    return _FakeWork()


@pytest.fixture(scope="module")
def pool() -> Iterator[PooledWork]:
    # One pool for the module: starting interpreters is the slow part.
    pooled = PooledWork(task_pb2.STAGE_DETECT, _fake_work, StageSettings(), workers=2)
    yield pooled
    pooled.close()


def test_the_pool_runs_the_work_in_other_processes_and_returns_the_envelope(pool: PooledWork) -> None:
    envelope = task_pb2.TaskEnvelope(task_id="t", prompt="hello")
    output = pool.run(envelope, ObjectStore(StageSettings()))
    assert output == StageOutput(b"hello", "image/png", "png", 1, 1)
    assert envelope.metadata["pid"] not in {"", str(os.getpid())}


def test_a_task_failure_in_a_worker_reaches_the_runner_with_its_code(pool: PooledWork) -> None:
    with pytest.raises(TaskFailed) as raised:
        pool.run(task_pb2.TaskEnvelope(task_id="t", prompt="fail"), ObjectStore(StageSettings()))
    assert (raised.value.code, str(raised.value)) == ("no_pet_detected", "no pet here")


def test_a_worker_that_dies_is_a_transient_failure_and_the_pool_is_rebuilt(pool: PooledWork) -> None:
    objects = ObjectStore(StageSettings())
    with pytest.raises(TransientError, match="worker died"):
        pool.run(task_pb2.TaskEnvelope(task_id="t", prompt="die"), objects)
    assert pool.run(task_pb2.TaskEnvelope(task_id="t", prompt="again"), objects).data == b"again"


def test_closing_a_pool_that_is_still_starting_leaves_no_worker_behind() -> None:
    pooled = PooledWork(task_pb2.STAGE_DETECT, _fake_work, StageSettings(), workers=2)
    processes = list(pooled._executor._processes.values())
    assert len(processes) == 2

    pooled.close(grace_seconds=0.5)

    # Killed and joined by close(); on a loaded machine the kernel may take a moment to reap them.
    wait_until(lambda: not any(process.is_alive() for process in processes), 10, "the workers to exit")
    with pytest.raises(TransientError, match="shut down"):
        pooled.run(task_pb2.TaskEnvelope(task_id="t", prompt="late"), ObjectStore(StageSettings()))
