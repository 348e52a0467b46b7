"""Self-check of the baseline against a local stack's Postgres: 3 tasks with the cat photo, one photo
without a pet (must fail `no_pet_detected`), one immediate and one batched callback to a loopback
receiver; then everything stops and no process of the baseline may be left. Usage:

    .venv/bin/imgpipe stack up --name bench
    .venv/bin/python -m bench.baselines.celery_redis.smoke [--stack bench]

Prints JSON; exits 1 when an outcome is not the expected one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from imgpipe.localstack.processes import still_alive
from imgpipe.localstack.stack import stack_endpoints
from imgpipe.localstack.waiting import wait_until
from imgpipe.samples import photo_jpeg
from imgpipe.testing.receivers import run_receivers

from .harness import CeleryBaseline, TaskOutcome

PROMPTS = ("a watercolor painting", "pencil sketch", "cartoon")


def database_url(stack: str) -> str:
    if url := os.environ.get("IMGPIPE_DATABASE_URL"):
        return url
    endpoints = stack_endpoints(stack)
    if endpoints is None:
        sys.exit(f"stack {stack!r} is down: run `.venv/bin/imgpipe stack up --name {stack}` first")
    return endpoints.database_url


def shown(outcome: TaskOutcome) -> dict[str, Any]:
    return {
        "state": outcome.state,
        "error_code": outcome.error_code,
        "processing_ms": outcome.processing_ms,
        "latency_seconds": round((outcome.completed_at - outcome.created_at).total_seconds(), 2)
        if outcome.completed_at
        else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stack", default="bench", help="the local stack whose Postgres to use")
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=180)
    args = parser.parse_args()
    url = database_url(args.stack)
    cat, astronaut = photo_jpeg(), photo_jpeg("astronaut")
    with tempfile.TemporaryDirectory(prefix="celery-baseline-") as workdir, run_receivers() as receivers:
        started = time.monotonic()
        with CeleryBaseline(Path(workdir), url) as baseline:
            ready_seconds = time.monotonic() - started
            submitted = time.monotonic()
            cats = [baseline.submit(PROMPTS[i % len(PROMPTS)], cat) for i in range(args.tasks)]
            outcomes = baseline.wait(cats, args.timeout)
            cats_seconds = time.monotonic() - submitted
            no_pet = baseline.submit("cartoon", astronaut)
            immediate = baseline.submit("sepia", cat, callback_url=receivers.url("/immediate"))
            batched = baseline.submit("pop art", cat, callback_url=receivers.url("/batched"), batched=True)
            outcomes |= baseline.wait([no_pet, immediate, batched], args.timeout)
            wait_until(
                lambda: {immediate, batched} <= receivers.task_ids(), args.timeout, "both callbacks to arrive"
            )
            # With start times, so a pid the kernel reuses after stop() is not taken for a survivor.
            processes, versions = {pid: _start_time(pid) for pid in baseline.pids()}, baseline.versions()
        left = still_alive(processes)
    expected: dict[str, tuple[str, str | None]] = {
        task_id: ("succeeded", None) for task_id in [*cats, immediate, batched]
    }
    expected[no_pet] = ("failed", "no_pet_detected")
    wrong = {
        task_id: shown(outcomes[task_id])
        for task_id, (state, code) in expected.items()
        if (outcomes[task_id].state, outcomes[task_id].error_code) != (state, code)
    }
    report = {
        "versions": versions,
        "start_seconds": round(ready_seconds, 2),
        f"{args.tasks}_cat_tasks_seconds": round(cats_seconds, 2),
        "cat_tasks": [shown(outcomes[task_id]) for task_id in cats],
        "no_pet_task": shown(outcomes[no_pet]),
        "callbacks": {
            "immediate": [r.json() for r in receivers.requests_to("/immediate")],
            "batched": [r.json() for r in receivers.requests_to("/batched")],
        },
        "processes_while_running": len(processes),
        "processes_left_after_stop": left,
        "unexpected": wrong,
    }
    print(json.dumps(report, indent=2, default=str))
    if wrong or left:
        sys.exit(1)


def _start_time(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return -1  # already gone


if __name__ == "__main__":
    main()
