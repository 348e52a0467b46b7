"""A stage on the local backends with a process pool (IMGPIPE_STAGE_WORKERS=2), in the real pipeline:
both workers take tasks, and kill -9 of one worker in the middle of a task loses no task."""

from __future__ import annotations

import json
import os
import re
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from imgpipe.client import ApiClient, TaskRequest
from imgpipe.localstack.pipeline import LocalPipeline
from imgpipe.localstack.processes import read_pid_file
from imgpipe.localstack.waiting import wait_until
from imgpipe.samples import photo_jpeg

pytestmark = pytest.mark.integration

STAGE = "matte"  # the slowest local stage (GrabCut): its workers are busy while tasks arrive
RAN_IN = re.compile(r"ran in pool worker (\d+)")


@pytest.fixture
def pooled_stage(pipeline: LocalPipeline) -> Iterator[int]:
    """The stage restarted with two pool workers; its pid. Restarted with the pipeline's settings after."""
    pipeline.stop(STAGE)
    pipeline.start(STAGE, {"IMGPIPE_STAGE_WORKERS": "2", "IMGPIPE_STAGE_MAX_IN_FLIGHT": "1"})
    record = read_pid_file(pipeline.paths.pid_file(STAGE))
    assert record is not None
    yield record.pid
    pipeline.stop(STAGE)
    pipeline.start(STAGE)


def _runs(log_file: Path, task_ids: set[str]) -> dict[str, set[int]]:
    """Task id -> the pool worker pids its stage run was logged from (a retried task has several)."""
    runs: dict[str, set[int]] = {}
    for line in log_file.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        match = RAN_IN.fullmatch(str(entry.get("message", "")))
        if match and entry.get("task_id") in task_ids:
            runs.setdefault(entry["task_id"], set()).add(int(match.group(1)))
    return runs


def _submit(api: ApiClient, count: int) -> list[str]:
    cat, run = photo_jpeg(), uuid.uuid4().hex[:10]
    return [
        api.submit(TaskRequest("pencil sketch", image=cat, idempotency_key=f"pool-{run}-{i}"))["id"]
        for i in range(count)
    ]


@pytest.mark.timeout(600)
def test_two_pool_workers_both_do_work_and_every_task_succeeds(
    pipeline: LocalPipeline, api: ApiClient, pooled_stage: int
) -> None:
    task_ids = _submit(api, 12)

    views = api.wait(task_ids, timeout=480)

    assert {view["state"] for view in views.values()} == {"succeeded"}
    runs = _runs(pipeline.paths.log_file(STAGE), set(task_ids))
    assert set(runs) == set(task_ids)
    workers = set().union(*runs.values())
    assert len(workers) == 2, runs
    assert pooled_stage not in workers  # the work ran in the pool, not in the consuming process


@pytest.mark.timeout(600)
def test_kill_9_of_a_pool_worker_mid_task_loses_no_task(
    pipeline: LocalPipeline, api: ApiClient, pooled_stage: int
) -> None:
    task_ids = _submit(api, 16)
    log_file = pipeline.paths.log_file(STAGE)

    # Once both workers have finished a task of this run, more of its tasks are queued at the stage,
    # so each worker is in the middle of one: kill -9 one of them.
    def busy_workers() -> set[int] | None:
        done = set().union(*_runs(log_file, set(task_ids)).values())
        return done if len(done) == 2 else None

    victim = min(wait_until(busy_workers, 300, f"both {STAGE} pool workers to have run a task"))
    logged_before = log_file.stat().st_size
    os.kill(victim, signal.SIGKILL)

    views = api.wait(task_ids, timeout=480)

    assert {view["state"] for view in views.values()} == {"succeeded"}
    assert pipeline.is_running(STAGE)
    assert read_pid_file(pipeline.paths.pid_file(STAGE)) is not None
    with log_file.open("rb") as log:
        log.seek(logged_before)
        assert b"a stage pool worker died" in log.read()
    # The tasks after the kill ran in the rebuilt pool's workers.
    workers = set().union(*_runs(log_file, set(task_ids)).values())
    assert len(workers - {victim}) >= 2, workers
