"""Every benchmark in one run (`make bench`): imgpipe against the compute bound and the Celery + Redis
baseline on the same images (three model workloads), callback delivery against the old sender, and
ingest.

    .venv/bin/python -m bench.suite [--reps 3] [--only PART[,PART...]] [--burst 40] ...

It starts its own local stack (`bench`), the imgpipe pipeline on it and the baseline (redis-server,
Celery workers), and runs, `--reps` times each and with the systems in turns (so a slow minute of
the machine hits every system):

- local-cpu: each system through a burst and a steady arrival rate with the CPU backends, and
  py-spy on imgpipe's busiest stage during one burst;
- remote-model: a burst of `--remote-tasks` with the HTTP backends against a simulated model server
  (bench/pipelines.py's ModelServer): imgpipe, Celery prefork x cores, Celery threads x 4, and a
  sweep of Celery threads pools (`--remote-sweep`), the best of which is marked;
- null: a burst of `--null-tasks` with the null backends, for the CPU per task of each whole system;

and then callbacks and ingest. `--only` runs some of those parts (local-cpu, remote-model, null,
callbacks, ingest) and keeps the other parts' records of the results file already there. It writes
docs/bench/results.json (raw, with machine facts), the plots next to it, and the generated tables
between the markers in docs/benchmarks.md (with another `--out`, a benchmarks.md in that directory);
the rest of that document is prose written from those figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol

from bench import callbacks, ingest, pipelines, plots, report
from bench.baselines.celery_redis.harness import CeleryBaseline
from bench.measure import (
    REPO_ROOT,
    Progress,
    Repeated,
    machine_facts,
    mean_and_stdev,
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
# The parts of a run, in the order their records are written (bench-targets reads the first
# local-cpu records, so they stay first).
PARTS = (*pipelines.WORKLOADS, "callbacks", "ingest")
WARM_UP_TASKS = 8  # unmeasured tasks through each system started for a run (remote-model, null)


def parts(value: str) -> list[str]:
    chosen = [part.strip() for part in value.split(",") if part.strip()]
    unknown = sorted(set(chosen) - set(PARTS))
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown part(s) {', '.join(unknown)}: choose from {', '.join(PARTS)}"
        )
    return chosen


def part_of(record: dict[str, Any]) -> str:
    """Which part of the suite wrote a record (pipeline records from before workloads: local-cpu)."""
    if record.get("kind") == "pipeline":
        return str(record.get("workload") or "local-cpu")
    return str(record.get("kind"))


def main() -> None:  # noqa: C901 (the suite's one sequence of parts, read top to bottom)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--only", type=parts, default=list(PARTS), help=f"comma-separated parts to run: {','.join(PARTS)}"
    )
    parser.add_argument("--burst", type=int, default=40, help="tasks submitted at once")
    parser.add_argument("--steady-tasks", type=int, default=40)
    parser.add_argument("--steady-rate", type=float, default=1.0, help="tasks per second")
    parser.add_argument("--callbacks", type=int, default=1000, help="callbacks per delivery run")
    parser.add_argument("--callback-limit", type=int, default=20, help="each receiver's requests/s")
    parser.add_argument("--old-sender-seconds", type=float, default=60.0)
    parser.add_argument("--ingest-seconds", type=float, default=15.0, help="length of each HTTP run")
    parser.add_argument("--ingest-connections", type=int, default=16)
    parser.add_argument("--remote-tasks", type=int, default=200, help="tasks per remote-model burst")
    parser.add_argument("--remote-service-time", type=float, default=0.25, help="model call seconds")
    parser.add_argument("--remote-slots", type=int, default=4, help="model calls served at once per model")
    parser.add_argument(
        "--remote-sweep",
        type=lambda v: [int(c) for c in v.split(",") if c],
        default=[8, 16, 32],
        help="Celery threads concurrencies of the best-Celery sweep",
    )
    parser.add_argument("--null-tasks", type=int, default=200, help="tasks per null burst")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--keep-stack", action="store_true", help="leave the bench stack running")
    args = parser.parse_args()

    # Debian's tools the run needs: redis-server (the baseline's broker) and wrk (ingest's load).
    missing = [package for package in ("redis-server", "wrk") if shutil.which(package) is None]
    if missing:
        apt_install(missing, Path(tempfile.gettempdir()) / "apt-bench.log")

    only = set(args.only)
    workloads = [
        pipelines.Workload("burst", args.burst),
        pipelines.Workload("steady", args.steady_tasks, args.steady_rate),
    ]
    remote = pipelines.Workload("burst", args.remote_tasks, workload="remote-model")
    null = pipelines.Workload("burst", args.null_tasks, workload="null")
    cores = len(os.sched_getaffinity(0))
    # The remote-model Celery configurations: the old default, a threads pool as many as the model
    # client's default cap, and the sweep for the best Celery can do.
    remote_celery = [("prefork", cores), ("threads", 4), *(("threads", n) for n in args.remote_sweep)]
    remote_celery = list(dict.fromkeys(remote_celery))  # a sweep naming 4 again: one configuration
    image = photo_jpeg()
    args.out.mkdir(parents=True, exist_ok=True)
    command = "make bench" if len(sys.argv) == 1 else " ".join(["python -m bench.suite", *sys.argv[1:]])
    # A workload run advances by its task count; a callback run by one.
    callback_runs = len(callbacks.URL_COUNTS) * len(callbacks.MODES) * 2
    steps = 0.0
    if "local-cpu" in only:
        steps += args.reps * 3 * sum(w.tasks for w in workloads)
    if "remote-model" in only:
        steps += args.reps * (1 + len(remote_celery)) * remote.tasks
    if "null" in only:
        steps += args.reps * 2 * null.tasks
    if "callbacks" in only:
        steps += callback_runs
    new: dict[str, list[dict[str, Any]]] = {}
    endpoints = start_stack(STACK)
    pipeline = LocalPipeline(STACK, endpoints)
    postgres = stack_pids(STACK, ["postgres"])
    whole_imgpipe = lambda: [*pipeline_pids(STACK)(), *stack_pids(STACK)()]  # noqa: E731
    try:
        with Progress(steps, "starting", unit="task") as progress, tempfile.TemporaryDirectory() as work:
            if "local-cpu" in only:
                pipeline.up()  # the default settings (the other parts start the services with theirs)
                baseline = CeleryBaseline(Path(work) / "celery", endpoints.database_url)
                baseline.start()
                compute = pipelines.ComputeBound()
                systems: list[pipelines.System] = [
                    compute,
                    pipelines.Imgpipe(pipeline, whole_imgpipe),
                    pipelines.Celery(baseline, postgres),
                ]
                try:
                    new["local-cpu"] = measure_pipelines(
                        systems, workloads, args.reps, image, progress, args.out
                    )
                finally:
                    compute.close()
                    baseline.stop()
            if "remote-model" in only:
                server = pipelines.ModelServer(
                    Path(work) / "model-server.log", args.remote_service_time, args.remote_slots
                )
                with server:
                    settings = pipelines.remote_model_settings(server.url)
                    in_flight = pipelines.REMOTE_STAGE_MAX_IN_FLIGHT
                    pipeline.up(settings | {"IMGPIPE_STAGE_MAX_IN_FLIGHT": str(in_flight)})
                    config = f"max in flight {in_flight}"
                    entries: list[Entry] = [always(pipelines.Imgpipe(pipeline, whole_imgpipe, config))]
                    entries += [
                        pipelines.CeleryRun(Path(work), endpoints.database_url, postgres, pool, n, settings)
                        for pool, n in remote_celery
                    ]
                    measured = measure_turns(entries, remote, args.reps, image, progress)
                    facts = {
                        "bound_tasks_per_second": server.bound_tasks_per_second,
                        "model_server": server.facts(),
                        "model_max_concurrency": pipelines.MODEL_MAX_CONCURRENCY,
                    }
                    new["remote-model"] = mark_best_sweep([r | facts for r in measured], args.remote_sweep)
            if "null" in only:
                settings = pipelines.null_settings()
                pipeline.up(settings)
                entries = [
                    always(pipelines.Imgpipe(pipeline, whole_imgpipe, "null backends")),
                    pipelines.CeleryRun(
                        Path(work), endpoints.database_url, postgres, "prefork", cores, settings
                    ),
                ]
                new["null"] = measure_turns(entries, null, args.reps, image, progress)
            if only & {"callbacks", "ingest"}:
                pipeline.up()  # the default settings again
            if "callbacks" in only:
                progress.describe("callbacks")
                new["callbacks"] = callbacks.run_all(
                    pipeline,
                    Path(work),
                    args.callbacks,
                    args.callback_limit,
                    args.old_sender_seconds,
                    progress,
                )
            if "ingest" in only:
                progress.describe("ingest")
                ingested = ingest.run_ingest_bench(
                    pipeline, args.ingest_seconds, args.ingest_connections, repetitions=args.reps
                )
                new["ingest"] = ingest.records(ingested)
    finally:
        if not args.keep_stack:
            pipeline.down()
            stop_stack(STACK)

    results_path = args.out / "results.json"
    records = merge_records(results_path, new)
    results = {
        "benchmark": "suite",
        "command": command,
        "parameters": vars(args) | {"out": str(args.out)},
        "records": records,
    }
    path = write_results(results_path, results, machine=machine_facts(endpoints.database_url))
    plots.plot_all([path], args.out)
    doc = (
        REPO_ROOT / "docs" / "benchmarks.md"
        if args.out.resolve() == OUT.resolve()
        else args.out / "benchmarks.md"
    )
    report.update_benchmarks_doc(path, doc)
    print(f"results: {path}; plots and {doc} updated")


def merge_records(path: Path, new: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The records of the parts just run, and of the other parts those already in `path` (a run with
    --only), in PARTS order."""
    by_part: dict[str, list[dict[str, Any]]] = {}
    if path.exists():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            for record in json.loads(path.read_text())["records"]:
                if part_of(record) == "local-cpu":
                    record.setdefault("workload", "local-cpu")
                by_part.setdefault(part_of(record), []).append(record)
    by_part.update(new)
    return [record for part in PARTS for record in by_part.get(part, [])]


class Entry(Protocol):
    """A system that may need starting before each run (a Celery configuration) and stopping after."""

    def start(self) -> pipelines.System: ...

    def stop(self) -> None: ...


class always:
    """An Entry for a system that stays up between runs."""

    def __init__(self, system: pipelines.System) -> None:
        self._system = system

    def start(self) -> pipelines.System:
        return self._system

    def stop(self) -> None:
        pass


def measure_turns(
    entries: list[Entry], workload: pipelines.Workload, reps: int, image: bytes, progress: Progress
) -> list[dict[str, Any]]:
    """One workload on each entry, `reps` times, in turns; a record per system and configuration."""
    runs: dict[tuple[str, str | None], Repeated] = {}
    for rep in range(reps):
        for entry in entries:
            progress.describe(f"{workload.workload}: starting a system, run {rep + 1}/{reps}")
            system = entry.start()
            config = getattr(system, "config", None)
            try:
                label = f"{system.name} ({config})" if config else system.name
                progress.describe(
                    f"{workload.workload}: {label}, {workload.describe()}, run {rep + 1}/{reps}"
                )
                run = pipelines.run_workload(system, workload, image, progress)
            finally:
                entry.stop()
            runs.setdefault((system.name, config), Repeated()).add(run)
    return [repeated.summary() | {"runs": repeated.runs} for repeated in runs.values()]


def mark_best_sweep(records: list[dict[str, Any]], sweep: list[int]) -> list[dict[str, Any]]:
    """Mark the sweep's Celery configuration with the highest mean throughput `best_celery`."""
    swept = [f"threads x {n}" for n in sweep]
    candidates = [r for r in records if r["system"] == pipelines.Celery.name and r.get("config") in swept]
    for record in candidates:
        record["sweep"] = swept
        record["best_celery"] = False
    if candidates:
        best = max(candidates, key=lambda r: mean_and_stdev(r["tasks_per_second"])[0])
        best["best_celery"] = True
    return records


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
