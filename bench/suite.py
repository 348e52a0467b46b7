"""Every benchmark in one run (`make bench`): imgpipe against the compute bound and the Celery + Redis
baseline on the same images, callback delivery against the old sender, and ingest.

    .venv/bin/python -m bench.suite [--reps 3] [--burst 40] [--steady-tasks 40 --steady-rate 1]

It starts its own local stack (`bench`), the imgpipe pipeline on it and the baseline (redis-server,
Celery workers), runs each system through a burst and a steady arrival rate `--reps` times, in
turns (so a slow minute of the machine hits every system), profiles imgpipe's busiest stage with
py-spy during one burst, and then measures callbacks and ingest. It writes docs/bench/results.json
(raw, with machine facts), the plots next to it, and the generated tables between the markers in
docs/benchmarks.md; the rest of that document is prose written from those figures.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import callbacks, ingest, pipelines, plots, report
from bench.baselines.celery_redis.harness import CeleryBaseline
from bench.measure import (
    REPO_ROOT,
    Progress,
    Repeated,
    machine_facts,
    pipeline_pids,
    stack_pids,
    write_results,
)
from imgpipe.localstack.install import apt_install
from imgpipe.localstack.pipeline import LocalPipeline
from imgpipe.localstack.stack import start_stack, stop_stack
from imgpipe.samples import photo_jpeg

STACK = "bench"
OUT = REPO_ROOT / "docs" / "bench"
PROFILED_SERVICE = "detect"  # the stage that bounds imgpipe's throughput (see docs/benchmarks.md)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--burst", type=int, default=40, help="tasks submitted at once")
    parser.add_argument("--steady-tasks", type=int, default=40)
    parser.add_argument("--steady-rate", type=float, default=1.0, help="tasks per second")
    parser.add_argument("--callbacks", type=int, default=1000, help="callbacks per delivery run")
    parser.add_argument("--callback-limit", type=int, default=20, help="each receiver's requests/s")
    parser.add_argument("--old-sender-seconds", type=float, default=60.0)
    parser.add_argument("--ingest-seconds", type=float, default=15.0, help="length of each HTTP run")
    parser.add_argument("--ingest-connections", type=int, default=16)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--keep-stack", action="store_true", help="leave the bench stack running")
    args = parser.parse_args()

    # Debian's tools the run needs: redis-server (the baseline's broker) and wrk (ingest's load).
    missing = [package for package in ("redis-server", "wrk") if shutil.which(package) is None]
    if missing:
        apt_install(missing, Path(tempfile.gettempdir()) / "apt-bench.log")

    workloads = [
        pipelines.Workload("burst", args.burst),
        pipelines.Workload("steady", args.steady_tasks, args.steady_rate),
    ]
    image = photo_jpeg()
    args.out.mkdir(parents=True, exist_ok=True)
    command = "make bench" if len(sys.argv) == 1 else " ".join(["python -m bench.suite", *sys.argv[1:]])
    # A workload run advances by its task count; a callback run by one.
    callback_runs = len(callbacks.URL_COUNTS) * len(callbacks.MODES) * 2
    steps = args.reps * 3 * sum(w.tasks for w in workloads) + callback_runs
    records: list[dict[str, Any]] = []
    endpoints = start_stack(STACK)
    pipeline = LocalPipeline(STACK, endpoints)
    try:
        with Progress(steps, "starting", unit="task") as progress, tempfile.TemporaryDirectory() as work:
            pipeline.up()
            baseline = CeleryBaseline(Path(work) / "celery", endpoints.database_url)
            baseline.start()
            compute = pipelines.ComputeBound()
            systems: list[pipelines.System] = [
                compute,
                pipelines.Imgpipe(pipeline, lambda: [*pipeline_pids(STACK)(), *stack_pids(STACK)()]),
                pipelines.Celery(baseline, stack_pids(STACK, ["postgres"])),
            ]
            try:
                records += measure_pipelines(systems, workloads, args.reps, image, progress, args.out)
            finally:
                compute.close()
                baseline.stop()
            progress.describe("callbacks")
            records += callbacks.run_all(
                pipeline, Path(work), args.callbacks, args.callback_limit, args.old_sender_seconds, progress
            )
            progress.describe("ingest")
            measured = ingest.run_ingest_bench(
                pipeline, args.ingest_seconds, args.ingest_connections, repetitions=args.reps
            )
            records += ingest.records(measured)
    finally:
        if not args.keep_stack:
            pipeline.down()
            stop_stack(STACK)

    results = {
        "benchmark": "suite",
        "command": command,
        "parameters": vars(args) | {"out": str(args.out)},
        "records": records,
    }
    path = write_results(args.out / "results.json", results, machine=machine_facts(endpoints.database_url))
    plots.plot_all([path], args.out)
    report.update_benchmarks_doc(path, REPO_ROOT / "docs" / "benchmarks.md")
    print(f"results: {path}; plots and docs/benchmarks.md updated")


def measure_pipelines(
    systems: list[pipelines.System],
    workloads: list[pipelines.Workload],
    reps: int,
    image: bytes,
    progress: Progress,
    out: Path,
) -> list[dict[str, Any]]:
    """Each workload on each system, `reps` times, in turns; one repetition of imgpipe's burst is
    profiled."""
    runs: dict[tuple[str, str], Repeated] = {}
    for rep in range(reps):
        for workload in workloads:
            for system in systems:
                progress.describe(f"{system.name}: {workload.describe()}, run {rep + 1}/{reps}")
                profile = (
                    profiling(out / "profile-detect.txt")
                    if rep == 0 and workload.scenario == "burst" and system.name == "imgpipe"
                    else None
                )
                with profile or contextlib.nullcontext():
                    run = pipelines.run_workload(system, workload, image, progress)
                runs.setdefault((system.name, workload.scenario), Repeated()).add(run)
    return [repeated.summary() | {"runs": repeated.runs} for repeated in runs.values()]


class profiling:
    """py-spy samples imgpipe's busiest stage while the block runs; the top functions go to `path`."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._raw = path.with_suffix(".collapsed")
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> profiling:
        pid = pipeline_pids(STACK, [PROFILED_SERVICE])()
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        self._process = subprocess.Popen(
            [
                py_spy,
                "record",
                "--format",
                "raw",
                "--output",
                str(self._raw),
                "--rate",
                "50",
                "--pid",
                str(next(iter(pid))),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return self

    def __exit__(self, *_: object) -> None:
        assert self._process is not None
        self._process.send_signal(2)  # py-spy writes its output on SIGINT
        self._process.wait(timeout=60)
        report.write_profile_summary(self._raw, self._path, PROFILED_SERVICE)
        self._raw.unlink(missing_ok=True)


if __name__ == "__main__":
    started = time.monotonic()
    main()
    print(f"bench suite took {time.monotonic() - started:.0f} s", file=sys.stderr)
