"""The benchmarks' shared measurement layer: CPU and memory of process trees, latency and throughput
summaries, repetitions, progress, and the results JSON the plots read.

Run from the repository root as modules (`.venv/bin/python -m bench.ingest ...`); this module's own
self-check: `.venv/bin/python -m bench.measure`.

Results files (write_results) are one JSON document per benchmark run:

    {"machine": {...machine_facts()...}, "benchmark": "ingest", "parameters": {...}, "records": [...]}

Each record is a flat dict naming what it measured ("kind": "pipeline" | "callbacks" | "ingest",
"system": "imgpipe" | "celery", "scenario", "urls", "mode", "door", ...) with its metrics; a metric
measured over repetitions is a summary dict (Repeated / summarize: mean, stdev, min, max, n, values),
a single measurement a plain number. bench/plots.py draws from those records; docs/benchmarks.md lists
the fields each kind carries.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import psutil
from tqdm import tqdm

REPO_ROOT = Path(__file__).resolve().parents[1]
# Python distributions whose versions a results file records, when installed.
RECORDED_DISTRIBUTIONS = (
    "imgpipe",
    "confluent-kafka",
    "faust-streaming",
    "fastapi",
    "uvicorn",
    "sqlalchemy",
    "psycopg",
    "celery",
    "redis",
    "kombu",
)

PidSource = Callable[[], Iterable[int]]
_ProcessKey = tuple[int, float]  # pid and create time: a reused pid is another process


# -- CPU and memory of process trees -----------------------------------------------------------


class ProcessSampler:
    """CPU seconds and peak memory of some root processes and all their descendants, sampled by a
    background thread.

    `pid_source` is called at every sample (the roots may change: a restarted service, a load
    generator started later); the descendants are looked up again each time, since workers spawn
    children. CPU is user + system time spent while the sampler ran: a process already running at
    the first sample counts from there, one started later from its start. A process that exits keeps
    the last CPU time seen, so up to one interval of its time is lost, and a process that lives
    shorter than an interval is missed. Peak RSS is the largest sum of the tree's resident sizes at
    one sample; pages processes share (forked workers, shared buffers) are counted once per process.

        with ProcessSampler(lambda: [server.pid]) as sampler:
            run_load()
        sampler.cpu_seconds, sampler.peak_rss_bytes
    """

    def __init__(self, pid_source: PidSource, interval: float = 0.2) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.interval = interval
        self._pid_source = pid_source
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._processes: dict[int, psutil.Process] = {}  # pid -> Process, kept while the pid lives
        self._baseline: dict[_ProcessKey, float] = {}
        self._last: dict[_ProcessKey, float] = {}
        self._names: dict[_ProcessKey, str] = {}
        self._root_of: dict[_ProcessKey, int] = {}  # the root pid a process was found under
        self._peak_by_root: dict[int, int] = {}
        self._started_wall = 0.0
        self._started = 0.0
        self._stopped: float | None = None
        self.peak_rss_bytes = 0
        self.samples = 0

    # The public results -------------------------------------------------------------------------

    @property
    def cpu_seconds(self) -> float:
        with self._lock:
            return sum(self._last[key] - self._baseline[key] for key in self._last)

    @property
    def wall_seconds(self) -> float:
        end = self._stopped if self._stopped is not None else time.monotonic()
        return max(0.0, end - self._started) if self._started else 0.0

    @property
    def mean_cores(self) -> float:
        """CPU seconds per wall second: 1.0 is one core busy for the whole run."""
        wall = self.wall_seconds
        return self.cpu_seconds / wall if wall > 0 else 0.0

    def cpu_seconds_by_name(self) -> dict[str, float]:
        """CPU seconds per process name (java, postgres, python3.11, ...), largest first."""
        totals: dict[str, float] = {}
        with self._lock:
            for key, last in self._last.items():
                name = self._names[key]
                totals[name] = totals.get(name, 0.0) + last - self._baseline[key]
        return dict(sorted(totals.items(), key=lambda item: -item[1]))

    def by_root(self) -> dict[int, dict[str, float | int]]:
        """CPU seconds and peak RSS per root pid (each root with its descendants), so that one
        sampler can account for several services at the cost of one scan of the process table."""
        found: dict[int, dict[str, float | int]] = {}
        with self._lock:
            for key, last in self._last.items():
                root = self._root_of[key]
                entry = found.setdefault(root, {"cpu_seconds": 0.0, "peak_rss_bytes": 0})
                entry["cpu_seconds"] += last - self._baseline[key]
            for root, peak in self._peak_by_root.items():
                found.setdefault(root, {"cpu_seconds": 0.0, "peak_rss_bytes": 0})["peak_rss_bytes"] = peak
        return found

    def as_dict(self) -> dict[str, Any]:
        return {
            "cpu_seconds": round(self.cpu_seconds, 3),
            "mean_cores": round(self.mean_cores, 3),
            "peak_rss_bytes": self.peak_rss_bytes,
            "wall_seconds": round(self.wall_seconds, 3),
            "samples": self.samples,
            "processes_seen": len(self._last),
        }

    # Running ------------------------------------------------------------------------------------

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError("a ProcessSampler runs once")
        self._started_wall = time.time()
        self._started = time.monotonic()
        self.sample()  # the baseline of what already runs
        self._thread = threading.Thread(target=self._run, name="process-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is None or self._stopped is not None:
            return
        self._stop.set()
        self._thread.join()
        self.sample()  # what ran since the last tick
        self._stopped = time.monotonic()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        """Take one sample now (the thread calls this every interval)."""
        first = self.samples == 0
        roots = set(self._pid_source())
        total_rss = 0
        rss_by_root: dict[int, int] = {}
        for root, process in self._tree(roots):
            try:
                with process.oneshot():
                    times = process.cpu_times()
                    rss = process.memory_info().rss
                    key = (process.pid, process.create_time())
                    name = process.name()
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                continue
            cpu = times.user + times.system
            total_rss += rss
            rss_by_root[root] = rss_by_root.get(root, 0) + rss
            with self._lock:
                if key not in self._baseline:
                    # Started after the sampler: count all its time; already running: from now on.
                    is_new = not first and key[1] >= self._started_wall - 1.0
                    self._baseline[key] = 0.0 if is_new else cpu
                    self._names[key] = name
                    self._root_of[key] = root
                self._last[key] = cpu
        with self._lock:
            self.peak_rss_bytes = max(self.peak_rss_bytes, total_rss)
            for root, rss in rss_by_root.items():
                self._peak_by_root[root] = max(self._peak_by_root.get(root, 0), rss)
            self.samples += 1

    def _tree(self, roots: set[int]) -> list[tuple[int, psutil.Process]]:
        """The live roots and their descendants, each with its root, from one pass over the process
        table. A root that descends from another root is its own group, not part of the other."""
        if not roots:
            return []
        children: dict[int, list[int]] = {}
        live = set(psutil.pids())
        for pid in live:
            process = self._process(pid)
            if process is None:
                continue
            try:
                children.setdefault(process.ppid(), []).append(pid)
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                continue
        for gone in set(self._processes) - live:
            del self._processes[gone]
        tree: list[tuple[int, psutil.Process]] = []
        seen: set[int] = set()
        for root in sorted(roots & live):
            pending = [root]
            while pending:
                pid = pending.pop()
                if pid in seen or (pid in roots and pid != root):
                    continue
                seen.add(pid)
                process = self._process(pid)
                if process is not None:
                    tree.append((root, process))
                pending.extend(children.get(pid, ()))
        return tree

    def _process(self, pid: int) -> psutil.Process | None:
        process = self._processes.get(pid)
        if process is None:
            try:
                process = psutil.Process(pid)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                return None
            self._processes[pid] = process
        return process


def alive(*processes: subprocess.Popen[Any] | psutil.Process | int) -> PidSource:
    """A pid source: the given processes while they run (e.g. a load generator)."""

    def pids() -> list[int]:
        found = []
        for item in processes:
            pid = item if isinstance(item, int) else item.pid
            if psutil.pid_exists(pid):
                found.append(pid)
        return found

    return pids


def service_pids(stack_name: str, services: Iterable[str] | None = None) -> dict[str, int]:
    """The pids of a local pipeline's running services (`imgpipe pipeline up`), all by default."""
    from imgpipe.localstack.layout import StackPaths
    from imgpipe.localstack.pipeline import SERVICES

    paths = StackPaths.for_stack(stack_name)
    return _running({service: paths.pid_file(service) for service in (services or SERVICES)})


def server_pids(stack_name: str, components: Iterable[str] | None = None) -> dict[str, int]:
    """The pids of a local stack's running servers (Kafka, Postgres, MinIO; `imgpipe stack up`)."""
    from imgpipe.localstack.endpoints import COMPONENTS
    from imgpipe.localstack.layout import StackPaths

    paths = StackPaths.for_stack(stack_name)
    return _running({component: paths.pid_file(component) for component in (components or COMPONENTS)})


def pipeline_pids(stack_name: str, services: Iterable[str] | None = None) -> PidSource:
    """A pid source: the running services of a local pipeline, looked up at every sample."""
    chosen = tuple(services) if services is not None else None
    return lambda: service_pids(stack_name, chosen).values()


def stack_pids(stack_name: str, components: Iterable[str] | None = None) -> PidSource:
    """A pid source: the local stack's running servers, looked up at every sample."""
    chosen = tuple(components) if components is not None else None
    return lambda: server_pids(stack_name, chosen).values()


def _running(pid_files: Mapping[str, Path]) -> dict[str, int]:
    from imgpipe.localstack.processes import read_pid_file

    found = {}
    for name, path in pid_files.items():
        record = read_pid_file(path)
        if record is not None and record.is_running():
            found[name] = record.pid
    return found


# -- Summaries ---------------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of sorted or unsorted values: the smallest value with at least
    `fraction` of the values at or below it (p99 of 100 values is the 99th smallest)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= fraction <= 1:
        raise ValueError("fraction must be within [0, 1]")
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def latency_summary(latencies: Iterable[float]) -> dict[str, float | int | None]:
    """count, mean, p50, p95, p99 (nearest rank), min and max of latencies in seconds; the statistics
    are None when there are no latencies."""
    values = sorted(latencies)
    if not values:
        return dict.fromkeys(("mean", "p50", "p95", "p99", "min", "max"), None) | {"count": 0}
    return {
        "count": len(values),
        "mean": statistics.fmean(values),
        "p50": percentile(values, 0.50),
        "p95": percentile(values, 0.95),
        "p99": percentile(values, 0.99),
        "min": values[0],
        "max": values[-1],
    }


def throughput(n: float, seconds: float) -> float:
    """Items per second."""
    if seconds <= 0:
        raise ValueError(f"throughput over {seconds} s")
    return n / seconds


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """mean, sample stdev (0 for one value), min, max, n and the values themselves."""
    if not values:
        raise ValueError("summary of no values")
    return {
        "mean": statistics.fmean(values),
        "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "n": len(values),
        "values": list(values),
    }


def is_summary(value: object) -> bool:
    return isinstance(value, Mapping) and "mean" in value and "stdev" in value and "n" in value


class Repeated:
    """The runs of a repeated measurement, and each metric's mean and stdev across them.

        reps = Repeated()
        for _ in range(3):
            reps.add({"tasks_per_second": 2.1, "latency_seconds": {"p50": 9.0, "p99": 20.0}})
        reps.summary()  # {"tasks_per_second": {"mean": .., "stdev": .., ...}, "latency_seconds": {...}}

    Numbers (not bools) become summaries, nested dicts are summarized key by key, None is skipped;
    other values (labels) are kept when every run agrees and listed per run otherwise.
    """

    def __init__(self) -> None:
        self.runs: list[Mapping[str, Any]] = []

    def __len__(self) -> int:
        return len(self.runs)

    def add(self, run: Mapping[str, Any]) -> None:
        self.runs.append(run)

    def summary(self) -> dict[str, Any]:
        return _summarize_runs(self.runs)

    def metric(self, *path: str) -> dict[str, Any]:
        """The summary of one metric, e.g. metric("latency_seconds", "p99")."""
        values = []
        for run in self.runs:
            value: Any = run
            for key in path:
                value = value.get(key) if isinstance(value, Mapping) else None
            if _is_number(value):
                values.append(float(value))
        return summarize(values)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _summarize_runs(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    keys: list[str] = []
    for run in runs:
        keys.extend(key for key in run if key not in keys)
    summary: dict[str, Any] = {}
    for key in keys:
        present = [run[key] for run in runs if key in run and run[key] is not None]
        if not present:
            summary[key] = None
        elif all(_is_number(value) for value in present):
            summary[key] = summarize([float(value) for value in present])
        elif all(isinstance(value, Mapping) for value in present):
            summary[key] = _summarize_runs(present)
        elif all(value == present[0] for value in present):
            summary[key] = present[0]
        else:
            summary[key] = present
    return summary


def mean_and_stdev(value: Any) -> tuple[float, float]:
    """A metric as (mean, stdev), whether it is a summary dict or a single number."""
    if is_summary(value):
        return float(value["mean"]), float(value["stdev"])
    if _is_number(value):
        return float(value), 0.0
    raise ValueError(f"not a metric: {value!r}")


# -- Progress ----------------------------------------------------------------------------------


class Progress:
    """A progress bar for long runs (tqdm on a terminal; elsewhere a plain line every `log_interval`
    seconds, so logs of background runs stay readable). Writes to stderr.

        with Progress(total=3 * 100, description="steady") as bar:
            bar.describe("steady, run 2/3")
            bar.advance(10)
    """

    def __init__(
        self,
        total: float | None,
        description: str = "",
        unit: str = "step",
        *,
        log_interval: float = 10.0,
        stream: IO[str] | None = None,
    ) -> None:
        self._stream = stream or sys.stderr
        self._interactive = self._stream.isatty() and os.environ.get("IMGPIPE_BENCH_PROGRESS") != "lines"
        self._log_interval = log_interval
        self.total = total
        self.done = 0.0
        self.description = description
        self.unit = unit
        self._started = time.monotonic()
        self._logged = self._started
        self._logged_done: float | None = None
        self._bar = (
            tqdm(total=total, desc=description, unit=unit, file=self._stream, dynamic_ncols=True)
            if self._interactive
            else None
        )

    def advance(self, steps: float = 1) -> None:
        self.done += steps
        if self._bar is not None:
            self._bar.update(steps)
        elif time.monotonic() - self._logged >= self._log_interval:
            self._log()

    def update_to(self, done: float) -> None:
        """Set the steps done so far (for counts read from elsewhere, e.g. rows in a table)."""
        self.advance(done - self.done)

    def describe(self, description: str) -> None:
        self.description = description
        if self._bar is not None:
            self._bar.set_description(description)
        else:
            self._log()

    def set_total(self, total: float | None) -> None:
        self.total = total
        if self._bar is not None:
            self._bar.reset(total=total)
            self._bar.update(self.done)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif not self._interactive:
            if self._logged_done != self.done:
                self._log()
            self._interactive = True  # closed: no further lines

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _log(self) -> None:
        if self._interactive:
            return
        self._logged = time.monotonic()
        self._logged_done = self.done
        line = tqdm.format_meter(
            _tidy(self.done),
            _tidy(self.total or 0),
            self._logged - self._started,
            prefix=self.description,
            unit=self.unit,
        )
        print(line, file=self._stream, flush=True)


def _tidy(value: float) -> float:
    """A count as tqdm prints it: whole numbers without ".0", others to one decimal."""
    return int(value) if float(value).is_integer() else round(value, 1)


# -- Results files -----------------------------------------------------------------------------


def machine_facts(
    database_url: str | None = None, extra_versions: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The machine and software a result was measured on: CPU model, cores, RAM, OS, Python, the
    local stack's pinned server versions (and Postgres's exact version when `database_url` is given),
    Python packages, the load generator, the git commit and the date."""
    from imgpipe.localstack import versions

    servers: dict[str, str] = {
        "kafka": versions.KAFKA_VERSION,
        "postgres": versions.POSTGRES_MAJOR,
        "minio": versions.MINIO_VERSION,
    }
    if database_url:
        servers["postgres"] = _postgres_version(database_url) or servers["postgres"]
    servers.update(extra_versions or {})
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu_model": _cpu_model(),
        "logical_cores": psutil.cpu_count(logical=True),
        "physical_cores": psutil.cpu_count(logical=False),
        "ram_bytes": psutil.virtual_memory().total,
        "os": _os_name(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average": [round(load, 2) for load in os.getloadavg()],
        "servers": servers,
        "packages": _package_versions(),
        "tools": _tool_versions(),
        "git": _git_facts(),
    }


def write_results(
    path: str | Path, payload: Mapping[str, Any], machine: Mapping[str, Any] | None = None
) -> Path:
    """Write {"machine": ..., **payload} as JSON (atomically), with machine_facts() unless `machine`
    is given; returns the path."""
    if "machine" in payload:
        raise ValueError("payload must not carry its own 'machine'")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    document = {"machine": dict(machine) if machine is not None else machine_facts(), **payload}
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=2, default=_json_default) + "\n")
    tmp.replace(target)
    return target


def read_results(path: str | Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(Path(path).read_text())
    return document


def _json_default(value: object) -> object:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


def _package_versions() -> dict[str, str]:
    found = {}
    for name in RECORDED_DISTRIBUTIONS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    try:
        import confluent_kafka

        found["librdkafka"] = confluent_kafka.libversion()[0]
    except ImportError:
        pass
    return found


def _tool_versions() -> dict[str, str]:
    tools = {}
    if shutil.which("wrk"):
        done = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
        first = (done.stdout or done.stderr).splitlines()
        if first:
            tools["wrk"] = first[0].split("[")[0].removeprefix("wrk").strip()
    return tools


def _git_facts() -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, check=False, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None}


def _postgres_version(database_url: str) -> str | None:
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url, pool_size=1)
    try:
        with engine.connect() as connection:
            version = connection.execute(text("SHOW server_version")).scalar_one()
        return str(version).split()[0]
    except Exception:
        return None
    finally:
        engine.dispose()


# -- Self-check --------------------------------------------------------------------------------

# A child that burns CPU before the sampler starts (not to be counted), then, on a line on stdin,
# runs a grandchild that burns and exits while the child still runs, and burns some more itself.
_BURNER = """
import subprocess, sys, time

def burn(seconds):
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass

burn(float(sys.argv[1]))
print("ready", flush=True)
sys.stdin.readline()
if len(sys.argv) > 3:
    subprocess.run([sys.executable, "-c", sys.argv[3], sys.argv[2]], check=True)
burn(float(sys.argv[2]))
time.sleep(0.6)  # let the sampler see the final CPU time
"""
_GRANDCHILD = "import sys, time\nend = time.process_time() + float(sys.argv[1])\n" + (
    "while time.process_time() < end: pass\ntime.sleep(0.6)\n"
)


def _selfcheck() -> None:
    """Exercise the summaries, Repeated, Progress and the sampler on a process tree that burns
    a known amount of CPU; raise AssertionError when the accounting is off."""
    summary = latency_summary(float(i) for i in range(1, 101))
    assert (summary["p50"], summary["p95"], summary["p99"], summary["max"]) == (50.0, 95.0, 99.0, 100.0)
    assert summary["mean"] == 50.5 and summary["count"] == 100
    assert latency_summary([])["p99"] is None
    assert throughput(30, 1.5) == 20.0
    reps = Repeated()
    for value in (1.0, 2.0, 3.0):
        reps.add({"rate": value, "latency": {"p99": value * 10}, "system": "imgpipe", "skip": None})
    result = reps.summary()
    assert result["rate"]["mean"] == 2.0 and result["rate"]["stdev"] == 1.0, result
    assert result["latency"]["p99"]["max"] == 30.0 and result["system"] == "imgpipe"
    assert mean_and_stdev(result["rate"]) == (2.0, 1.0) and mean_and_stdev(4) == (4.0, 0.0)
    with Progress(3, "self-check", log_interval=0) as bar:
        bar.advance()
        bar.describe("self-check, step 2")
        bar.update_to(3)

    before, after, grandchild = 0.4, 0.5, 0.5
    child = subprocess.Popen(
        [sys.executable, "-c", _BURNER, str(before), str(after), _GRANDCHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.stdout.readline().strip() == "ready"
        with ProcessSampler(alive(child), interval=0.1) as sampler:
            child.stdin.write("go\n")
            child.stdin.flush()
            child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    expected = after + grandchild
    cpu = sampler.cpu_seconds
    print(
        f"sampler: {cpu:.2f} CPU s (expected ~{expected:.2f} plus the grandchild's interpreter start-up), "
        f"peak RSS {sampler.peak_rss_bytes / 2**20:.1f} MiB, {sampler.samples} samples, "
        f"{len(sampler.cpu_seconds_by_name())} process names, {sampler.as_dict()['processes_seen']} processes"
    )
    # The lower bound fails if the exited grandchild were dropped; the upper one if the child's CPU
    # from before the sampler started were counted.
    assert expected - 0.1 <= cpu <= expected + before - 0.1, cpu
    assert sampler.as_dict()["processes_seen"] == 2, sampler.as_dict()
    assert list(sampler.by_root()) == [child.pid], sampler.by_root()
    assert abs(sampler.by_root()[child.pid]["cpu_seconds"] - cpu) < 1e-9
    assert 5 * 2**20 < sampler.peak_rss_bytes < 1024 * 2**20, sampler.peak_rss_bytes
    facts = machine_facts()
    assert facts["logical_cores"] and facts["servers"]["kafka"] and facts["git"]["commit"], facts
    print("self-check passed")


if __name__ == "__main__":
    _selfcheck()
