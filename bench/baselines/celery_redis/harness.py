"""The Celery + Redis baseline as one object a benchmark drives.

    with CeleryBaseline(workdir, database_url) as baseline:   # start(): redis, workers, sender
        ids = [baseline.submit(prompt, image) for ...]
        outcomes = baseline.wait(ids, timeout=600)
        baseline.pids()                                         # for CPU and memory accounting

Processes (each in its own session, stopped whole by stop()): redis-server; one Celery worker,
by default a prefork pool with one process per core (`pool="threads"`: one process running
`concurrency` tasks at once in threads, for stages that wait on a model server); one callback
sender (the scheduler). Images and artifacts live under workdir/objects, logs under workdir/logs.
Task rows go to imgpipe's own `tasks` table (migrated to head by start()) under the tenant
`celery-baseline`.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import version
from pathlib import Path
from types import TracebackType
from typing import Final

from celery import Celery, chain
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from imgpipe.localstack.processes import PidRecord, ProcessSpec, spawn, stop
from imgpipe.localstack.waiting import wait_until
from imgpipe.store.db import make_engine, make_sessions, upgrade
from imgpipe.store.models import TERMINAL_STATES, Task

from . import records
from .objects import FileObjects
from .protocol import (
    BROKER_URL_ENV,
    DATABASE_URL_ENV,
    DB_POOL_SIZE_ENV,
    OBJECTS_DIR_ENV,
    POOLS,
    STAGES,
    original_key,
    stage_task,
)
from .redis_server import RedisServer

READY_TIMEOUT_SECONDS: Final = 120.0  # the worker imports OpenCV & co.: slow on a busy machine
# SIGTERM is Celery's warm shutdown: running tasks finish first (a stage takes about a second).
WORKER_STOP_GRACE_SECONDS: Final = 30.0
SENDER_STOP_GRACE_SECONDS: Final = 10.0
_REPO_DIR: Final = Path(__file__).resolve().parents[3]  # where `bench.baselines` is importable from


@dataclass(frozen=True)
class TaskOutcome:
    state: str  # imgpipe's task states: succeeded, failed (canceled never happens here)
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    error_code: str | None
    processing_ms: int | None


class CeleryBaseline:
    def __init__(
        self,
        workdir: Path,
        database_url: str,
        concurrency: int | None = None,
        pool: str = "prefork",
        settings: Mapping[str, str] | None = None,
    ) -> None:
        """`settings`: extra environment of the worker (IMGPIPE_* stage settings, e.g. the backends)."""
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, not {pool!r}")
        self.workdir = workdir
        self.database_url = database_url
        self.concurrency = concurrency or len(os.sched_getaffinity(0))  # the old default: one per core
        self.pool = pool
        self.settings = dict(settings or {})
        self.objects = FileObjects(workdir / "objects")
        self._engine: Engine | None = None
        self._sessions: sessionmaker[Session] | None = None
        self._redis: RedisServer | None = None
        self._worker: PidRecord | None = None
        self._sender: PidRecord | None = None
        self._app: Celery | None = None
        self._hostname = ""

    # Lifecycle

    def start(self) -> None:
        """Migrate the task store, start redis-server, the worker and the sender; return when the
        worker answers a ping (raises, with everything stopped again, when something fails)."""
        upgrade(self.database_url)
        self._engine = make_engine(self.database_url)
        self._sessions = make_sessions(self._engine)
        records.ensure_tenant(self._sessions)
        try:
            self._start_processes()
        except BaseException:
            self.stop()
            raise

    def _start_processes(self) -> None:
        run, logs = self.workdir / "run", self.workdir / "logs"
        self.objects.root.mkdir(parents=True, exist_ok=True)
        self._redis = RedisServer.start(self.workdir / "redis")
        broker = self._redis.url
        env = {
            **self.settings,
            BROKER_URL_ENV: broker,
            DATABASE_URL_ENV: self.database_url,
            OBJECTS_DIR_ENV: str(self.objects.root),
            # A prefork process runs one task at a time; a threads pool runs `concurrency` at once.
            DB_POOL_SIZE_ENV: str(self.concurrency if self.pool == "threads" else 1),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(_REPO_DIR), os.environ.get("PYTHONPATH")])),
        }
        self._hostname = f"baseline-{self._redis.port}@{socket.gethostname()}"
        worker = [sys.executable, "-m", "celery", "-A", "bench.baselines.celery_redis.tasks", "worker"]
        worker += ["--pool", self.pool, "--concurrency", str(self.concurrency), "--hostname", self._hostname]
        spec = ProcessSpec(argv=(*worker, "--loglevel", "INFO"), env=env)
        self._worker = spawn(spec, logs / "worker.log", run / "worker.pid")
        sender = [sys.executable, "-m", "bench.baselines.celery_redis.sender", "--redis-url", broker]
        spec = ProcessSpec(argv=(*sender, "--database-url", self.database_url), env=env)
        self._sender = spawn(spec, logs / "sender.log", run / "sender.pid")
        self._app = Celery("celery-baseline-client", broker=broker, set_as_current=False)
        self._app.conf.update(task_ignore_result=True, broker_connection_retry_on_startup=True)
        wait_until(self._ready, READY_TIMEOUT_SECONDS, f"Celery worker {self._hostname} to answer a ping")

    def _ready(self) -> bool:
        for name, record in (("Celery worker", self._worker), ("callback sender", self._sender)):
            if record is None or not record.is_running():
                raise RuntimeError(f"the {name} exited while starting; see {self.workdir / 'logs'}")
        _, app = self._started()
        return bool(app.control.ping(destination=[self._hostname], timeout=0.5))

    def stop(self) -> None:
        """Stop every process of the baseline (idempotent); returns when none is left."""
        if self._worker is not None:
            stop(self._worker, signal.SIGTERM, WORKER_STOP_GRACE_SECONDS, "Celery worker")
            self._worker = None
        if self._sender is not None:
            stop(self._sender, signal.SIGTERM, SENDER_STOP_GRACE_SECONDS, "callback sender")
            self._sender = None
        if self._app is not None:
            self._app.close()
            self._app = None
        if self._redis is not None:
            self._redis.stop()
            self._redis = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def __enter__(self) -> CeleryBaseline:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # Work

    def submit(
        self, prompt: str, image: bytes, callback_url: str | None = None, batched: bool = False
    ) -> str:
        """Store the image, insert the task row (queued) and send the chain; returns the task id."""
        sessions, app = self._started()
        task_id = uuid.uuid4()
        key = original_key(str(task_id))
        self.objects.put(key, image, "application/octet-stream")
        records.insert_task(sessions, task_id, prompt, key, callback_url, batched)
        steps = [app.signature(stage_task(stage), (str(task_id), prompt), immutable=True) for stage in STAGES]
        chain(*steps).apply_async()
        return str(task_id)

    def wait(self, task_ids: list[str], timeout: float) -> dict[str, TaskOutcome]:
        """Poll the task rows until every one is terminal; raises TimeoutError after `timeout` s."""
        sessions, _ = self._started()
        ids = [uuid.UUID(task_id) for task_id in task_ids]

        def open_count() -> int:
            with sessions() as session:
                query = select(func.count()).select_from(Task)
                query = query.where(Task.id.in_(ids), Task.state.not_in(TERMINAL_STATES))
                return session.scalar(query) or 0

        wait_until(lambda: open_count() == 0, timeout, f"{len(ids)} baseline tasks to end")
        with sessions() as session:
            rows = session.scalars(select(Task).where(Task.id.in_(ids))).all()
        return {
            str(row.id): TaskOutcome(
                state=row.state.value,
                created_at=row.created_at,
                started_at=row.started_at,
                completed_at=row.completed_at,
                error_code=row.error_code,
                processing_ms=row.processing_ms,
            )
            for row in rows
        }

    def _started(self) -> tuple[sessionmaker[Session], Celery]:
        if self._sessions is None or self._app is None:
            raise RuntimeError("the baseline is not running: start() it first")
        return self._sessions, self._app

    # Accounting

    def pids(self) -> list[int]:
        """Every live process of the baseline: redis-server, the worker and its pool, the sender."""
        found: set[int] = set()
        if self._redis is not None:
            found.update(self._redis.pids())
        for record in (self._worker, self._sender):
            if record is not None:
                found.update(record.family())
        return sorted(found)

    def versions(self) -> dict[str, str]:
        return {
            "redis_server": self._redis.version if self._redis else "not started",
            "celery": version("celery"),
            "kombu": version("kombu"),
            "redis_py": version("redis"),
            "pool": f"{self.pool} x {self.concurrency}",
        }
