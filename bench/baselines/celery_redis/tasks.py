"""The old system's Celery app: the chain detect -> generate -> matte, and the immediate callback.

Each stage task takes the task id and the prompt, marks the task row processing, rebuilds the
envelope (detect from the row, the later stages from the envelope the previous stage stored), runs
imgpipe's own StageWork with its local CPU backend, stores its artifact on the filesystem and
returns, so Celery sends the chain's next task. Errors that carry a permanent code (bad image, no
pet) end the task `failed` at once; anything else is retried, at most 3 times with exponential
backoff, before it ends the task (`on_failure`). The last stage's success, or any failure, hands
the task's callback on: batched ones onto the Redis list the sender drains, immediate ones to the
callback task.

Workers run as `celery -A bench.baselines.celery_redis.tasks worker` with the CELERY_BASELINE_*
variables set (see protocol.py); the harness starts them.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
import redis
from billiard.einfo import ExceptionInfo
from celery import Celery, Task
from celery.exceptions import Ignore, SoftTimeLimitExceeded
from celery.signals import worker_process_init
from sqlalchemy.orm import Session, sessionmaker

from imgpipe.stages.detect import DetectWork
from imgpipe.stages.generate import GenerateWork
from imgpipe.stages.matte import MatteWork
from imgpipe.stages.runner import StageWork, permanent_code, store_artifact
from imgpipe.stages.settings import StageSettings
from imgpipe.store.db import make_engine, make_sessions
from imgpipe.store.models import CallbackStatus
from imgpipe.store.models import Task as TaskRow
from imgpipe.v1 import task_pb2

from . import records, sender
from .objects import FileObjects
from .protocol import (
    BROKER_URL_ENV,
    DATABASE_URL_ENV,
    DB_POOL_SIZE_ENV,
    DELIVER_CALLBACK_TASK,
    OBJECTS_DIR_ENV,
    envelope_key,
    stage_task,
)

MAX_RETRIES: Final = 3  # per task, as the old system's tasks had
# The old tasks' time limits: the soft one raises inside the task (it ends `timeout`), the hard one
# kills the pool process. A stage takes well under a second on the sample photo.
SOFT_TIME_LIMIT_SECONDS: Final = 120
TIME_LIMIT_SECONDS: Final = 150

app = Celery("celery_redis_baseline")
app.conf.update(
    broker_url=os.environ.get(BROKER_URL_ENV),
    broker_connection_retry_on_startup=True,
    # Task state lives in the Postgres task row, as the old system's did; the chain needs no results.
    task_ignore_result=True,
    task_serializer="json",
    accept_content=["json"],
)


class PermanentFailure(Exception):
    """A stage failed for good with one of imgpipe's task error codes; never retried."""

    def __init__(self, code: str, message: str) -> None:
        code = str(code)  # a plain str, not imgpipe's ErrorCode enum, in the row and the payload
        super().__init__(code, message)  # both in args, so it pickles across the pool's pipes
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class _Process:
    """What one pool process holds: its own database pool, Redis client and loaded stage backends."""

    sessions: sessionmaker[Session]
    objects: FileObjects
    redis: redis.Redis
    http: httpx.Client
    works: dict[str, StageWork]

    @classmethod
    def from_env(cls) -> _Process:
        settings = StageSettings()
        return cls(
            sessions=make_sessions(
                make_engine(
                    os.environ[DATABASE_URL_ENV], pool_size=int(os.environ.get(DB_POOL_SIZE_ENV, "1"))
                )
            ),
            objects=FileObjects(Path(os.environ[OBJECTS_DIR_ENV])),
            redis=redis.Redis.from_url(os.environ[BROKER_URL_ENV]),
            http=httpx.Client(timeout=sender.REQUEST_TIMEOUT_SECONDS),
            works={
                "detect": DetectWork.from_settings(settings),
                "generate": GenerateWork.from_settings(settings),
                "matte": MatteWork.from_settings(settings),
            },
        )


_process: _Process | None = None
_process_lock = threading.Lock()  # the threads pool's first tasks build _process at once


@worker_process_init.connect
def _load_in_pool_process(**_: Any) -> None:
    # After the fork, never before: a database pool or socket must not be shared across processes.
    global _process
    _process = _Process.from_env()


def _here() -> _Process:
    global _process
    if _process is None:  # a pool without worker_process_init (solo, threads)
        with _process_lock:
            if _process is None:
                _process = _Process.from_env()
    return _process


class StageTask(Task):  # type: ignore[type-arg]
    autoretry_for = (Exception,)
    dont_autoretry_for = (PermanentFailure, SoftTimeLimitExceeded)
    max_retries = MAX_RETRIES
    retry_backoff = True  # 1, 2, 4 s, with full jitter (Celery's exponential backoff)
    soft_time_limit = SOFT_TIME_LIMIT_SECONDS
    time_limit = TIME_LIMIT_SECONDS

    @property
    def stage(self) -> str:
        return str(self.name).removeprefix(stage_task(""))

    def on_failure(
        self,
        exc: Exception,
        task_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        einfo: ExceptionInfo,
    ) -> None:
        # Called once the task gives up: a permanent error, or the last retry of a transient one.
        if isinstance(exc, SoftTimeLimitExceeded):
            code = "timeout"
        elif isinstance(exc, PermanentFailure):
            code = exc.code
        else:
            code = permanent_code(exc) or "internal"
        row = records.fail(_here().sessions, args[0], code, str(exc) or repr(exc), self.stage)
        if row is not None:
            _hand_on_callback(row)


def _run_stage(stage: str, task_id: str, prompt: str) -> None:
    here = _here()
    row = records.start_stage(here.sessions, task_id, stage)
    if row is None:
        raise Ignore()  # the task already ended: stop the chain here
    if stage == "detect":
        envelope = task_pb2.TaskEnvelope(task_id=task_id, tenant_id=row.tenant_id, prompt=prompt)
        envelope.source.object_key = row.source_object_key or ""
    else:
        envelope = task_pb2.TaskEnvelope.FromString(here.objects.get(envelope_key(task_id)))
    try:
        output = here.works[stage].run(envelope, here.objects)
    except Exception as exc:
        code = permanent_code(exc)
        if code is not None and not getattr(exc, "retryable", False):
            raise PermanentFailure(code, str(exc)) from exc
        raise  # transient (or retryable with a code): autoretry_for takes it
    artifact = store_artifact(here.objects, task_id, stage, output)
    if stage != "matte":
        envelope.artifacts[stage].CopyFrom(artifact)
        here.objects.put(envelope_key(task_id), envelope.SerializeToString(), "application/x-protobuf")
        return
    finished = records.succeed(here.sessions, task_id, artifact)
    if finished is not None:
        _hand_on_callback(finished)


def _hand_on_callback(row: TaskRow) -> None:
    if not row.callback_url:
        return
    payload = sender.callback_payload(row)
    if row.callback_mode == "batched":
        sender.enqueue(_here().redis, row.callback_url, payload, task_id=str(row.id))
    else:
        deliver_callback.delay(row.callback_url, payload, str(row.id))


@app.task(bind=True, base=StageTask, name=stage_task("detect"))
def detect(self: StageTask, task_id: str, prompt: str) -> None:
    _run_stage("detect", task_id, prompt)


@app.task(bind=True, base=StageTask, name=stage_task("generate"))
def generate(self: StageTask, task_id: str, prompt: str) -> None:
    _run_stage("generate", task_id, prompt)


@app.task(bind=True, base=StageTask, name=stage_task("matte"))
def matte(self: StageTask, task_id: str, prompt: str) -> None:
    _run_stage("matte", task_id, prompt)


@app.task(bind=True, name=DELIVER_CALLBACK_TASK, max_retries=len(sender.RETRY_DELAYS_SECONDS))
def deliver_callback(self: Task, url: str, payload: dict[str, Any], task_id: str) -> None:  # type: ignore[type-arg]
    """An immediate callback: one POST now; on failure the same retries as the batched sender."""
    here = _here()
    body = json.dumps(payload, separators=(",", ":")).encode()
    if sender.post(here.http, url, body):
        records.set_callback_status(here.sessions, [task_id], CallbackStatus.DELIVERED)
        return
    retries = int(self.request.retries)
    if retries < len(sender.RETRY_DELAYS_SECONDS):
        raise self.retry(countdown=sender.RETRY_DELAYS_SECONDS[retries])
    records.set_callback_status(here.sessions, [task_id], CallbackStatus.FAILED)
