"""A stage's CPU-bound work in a pool of worker processes (`IMGPIPE_STAGE_WORKERS`).

The local backends (Haar cascades, Pillow filters, GrabCut) hold the GIL for most of a task, so
threads would not run two of them at once; `PooledWork` runs the wrapped stage's `run` in a
`ProcessPoolExecutor` instead. Workers are started with "spawn" (never fork: the parent already runs
librdkafka's threads), and each builds, once, its own stage work and object store from the settings.
The parent sends the envelope's bytes and gets the `StageOutput` and the envelope back (detect writes
the pet's box into it). Exceptions cross the boundary by pickling; one that does not survive it is
replaced by `WorkerError`, which keeps its `code`, `retryable` and message. A worker that dies
(kill -9, OOM) breaks the pool: the messages it had fail as transient, so the consume loop retries
them, and the next call gets a fresh pool. See docs/decisions/0004.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import pickle
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from imgpipe.objects import ObjectStore
from imgpipe.runtime.errors import TransientError
from imgpipe.stages.runner import StageOutput, StageWork
from imgpipe.stages.settings import StageSettings
from imgpipe.v1 import task_pb2

log = logging.getLogger(__name__)

# Builds a stage's work from its settings; pickled by reference (e.g. `DetectWork.from_settings`).
WorkFactory = Callable[[StageSettings], StageWork]

# -- how many workers -------------------------------------------------------------------------


def available_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """The CPUs this process may use: its affinity mask, capped by a cgroup CPU quota (rounded up)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs the cgroup's quota allows (cgroup v2 `cpu.max`, else v1 `cpu.cfs_quota_us`); None if none."""
    try:
        quota, _, period = (root / "cpu.max").read_text().strip().partition(" ")
        if quota == "max":
            return None
        return int(quota) / int(period or "100000")
    except (OSError, ValueError):
        pass
    for v1 in (root / "cpu", root / "cpu,cpuacct", root):
        try:
            quota_us = int((v1 / "cpu.cfs_quota_us").read_text())
            period_us = int((v1 / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    return None


def resolve_workers(configured: int | None, cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """`IMGPIPE_STAGE_WORKERS` if set, else the CPUs this process may use."""
    return configured if configured is not None else available_cpus(cgroup_root)


# -- errors across the process boundary -------------------------------------------------------


class WorkerError(Exception):
    """An exception from a worker that would not pickle, as its type name, message, code, retryable."""

    def __init__(self, kind: str, message: str, code: str | None = None, retryable: bool = False) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.code = code
        self.retryable = retryable

    def __reduce__(self) -> tuple[type[WorkerError], tuple[str, str, str | None, bool]]:
        message = str(self).removeprefix(f"{self.kind}: ")
        return (WorkerError, (self.kind, message, self.code, self.retryable))


def portable(exc: BaseException) -> BaseException:
    """`exc` if it survives pickling with its code and retryable, else a `WorkerError` carrying them."""
    try:
        copy = pickle.loads(pickle.dumps(exc))
        if getattr(copy, "code", None) == getattr(exc, "code", None) and getattr(
            copy, "retryable", None
        ) == getattr(exc, "retryable", None):
            return exc
    except Exception:  # any failure to round-trip means: send a stand-in
        pass
    code = getattr(exc, "code", None)
    return WorkerError(
        type(exc).__name__,
        str(exc),
        code=str(code) if code is not None else None,
        retryable=bool(getattr(exc, "retryable", False)),
    )


# -- the worker process -------------------------------------------------------------------------

_work: StageWork | None = None
_objects: ObjectStore | None = None


def _init_worker(factory: WorkFactory, settings: StageSettings, parent_pid: int) -> None:
    # The parent handles SIGTERM/SIGINT (drain, then shut the pool down); a terminal's Ctrl-C reaches
    # the whole group, and a worker must not die under the task it runs.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from imgpipe.runtime.logs import configure_logging

    configure_logging(settings.service_name, settings.log_level, settings.log_format)
    global _work, _objects
    _work = factory(settings)
    _objects = ObjectStore(settings)
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()
    log.info("stage pool worker %d ready", os.getpid())


def _exit_with_parent(parent_pid: int) -> None:
    """A parent killed with -9 cannot shut its pool down: its workers leave on their own."""
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    os._exit(0)


def _ping() -> int:
    return os.getpid()


def _run(envelope_bytes: bytes) -> tuple[StageOutput, bytes, int]:
    assert _work is not None and _objects is not None, "worker not initialized"
    envelope = task_pb2.TaskEnvelope.FromString(envelope_bytes)
    try:
        output = _work.run(envelope, _objects)
    except Exception as exc:
        carried = portable(exc)
        if carried is exc:
            raise
        raise carried from None
    return output, envelope.SerializeToString(), os.getpid()


# -- the parent's side -------------------------------------------------------------------------


class PooledWork:
    """A `StageWork` that runs `factory(settings).run` in `workers` processes."""

    def __init__(
        self, stage: task_pb2.Stage.ValueType, factory: WorkFactory, settings: StageSettings, workers: int
    ) -> None:
        self.stage = stage
        self._factory = factory
        self._settings = settings
        self._workers = workers
        self._lock = threading.Lock()
        self._closed = False
        self._executor = self._start()

    def _start(self) -> ProcessPoolExecutor:
        executor = ProcessPoolExecutor(
            max_workers=self._workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self._factory, self._settings, os.getpid()),
        )
        # Start every worker now, in the background (submit does not wait for them): the first tasks
        # need not pay the interpreter and model start-up, and readiness does not wait on it.
        warm = [executor.submit(_ping) for _ in range(self._workers)]
        for future in warm:
            future.add_done_callback(_log_warm_failure)
        return executor

    def run(self, envelope: task_pb2.TaskEnvelope, objects: ObjectStore) -> StageOutput:
        del objects  # each worker has its own
        with self._lock:
            if self._closed:
                raise TransientError("stage pool is shut down")
            executor = self._executor
        try:
            output, updated, pid = executor.submit(_run, envelope.SerializeToString()).result()
        except BrokenProcessPool as exc:
            self._replace(executor)
            raise TransientError(f"a stage pool worker died: {exc}") from exc
        envelope.ParseFromString(updated)
        log.info("ran in pool worker %d", pid)
        return output

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        """A fresh pool, unless another thread has already replaced this broken one."""
        with self._lock:
            if self._closed or self._executor is not broken:
                return
            log.warning("a stage pool worker died; starting a new pool")
            self._executor = self._start()
        broken.shutdown(wait=False, cancel_futures=True)

    def close(self, grace_seconds: float = 2.0) -> None:
        """Stop the workers; called after the consume loop drained what was in flight, so none has a
        task. A worker still starting up (a SIGTERM right after start) gets `grace_seconds`, then is
        killed rather than waited for."""
        with self._lock:
            self._closed = True
            executor = self._executor
        processes = list((executor._processes or {}).values())
        executor.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + grace_seconds
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(5.0)
        executor.shutdown(wait=True)


def _log_warm_failure(future: Future[int]) -> None:
    exc = None if future.cancelled() else future.exception()
    if exc is not None:
        log.warning("stage pool worker failed to start: %s", exc)
