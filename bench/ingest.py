"""Ingest: how many submissions the running local pipeline accepts per second, and how fast, through
each front door. Usage (after `imgpipe stack up` and `imgpipe pipeline up`, or `make up`):

    .venv/bin/python -m bench.ingest [--name dev] [--seconds 20] [--connections 16] [--repetitions 3]

HTTP: `wrk` (Debian's package, C, one thread) holds N connections open, each POSTing
`/v1/tasks` with the cat photo inline (base64) as soon as its previous answer came; the figures are
202 answers per second over the run and the latency of every answer (closed loop: a saturated
server's latency is its queueing time at N connections). wrk runs as its own process and needs a
few percent of a core, so on two cores nearly all of the CPU stays with the server.

Submit topic: this process produces M tasks (the same JSON, key and header TopicSubmitter sends,
with its producer settings) as fast as librdkafka takes them; the figures are messages produced and
acknowledged per second, and tasks the ingest-submit consumer accepted per second, measured as the
rows appearing in Postgres.

Submissions go as a tenant of their own ("bench", created with limits no run reaches) and ask for a
1 s time limit. By default detect, generate, matte and callback are stopped for the measurements
(ingest alone, as it runs on its own pods in a cluster; `--stages running` keeps them competing
for the two cores) and started again at the end; the deadline reaper ends each task a second after
its acceptance, so the stages skip them instead of spending minutes of CPU on each run's thousands
of tasks (`--time-limit 0`: the service's own limit). Before each measurement the bench waits until
the outbox is empty and the reaper ended the previous tasks. During each one, one ProcessSampler
accounts the CPU and memory of every service, of Kafka, Postgres and MinIO, and of the load
generator, and the machine's busy CPU tells how much else ran on it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import psutil
from confluent_kafka import KafkaError, Message, Producer
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from bench.measure import (
    ProcessSampler,
    Progress,
    Repeated,
    latency_summary,
    machine_facts,
    mean_and_stdev,
    server_pids,
    service_pids,
    throughput,
    write_results,
)
from imgpipe.client import TaskRequest
from imgpipe.contracts.payloads import CONTENT_TYPE_HEADER, JSON_CONTENT_TYPE
from imgpipe.contracts.registry import TopicKey, default_registry
from imgpipe.ingest.tenants import create_tenant
from imgpipe.localstack.pipeline import LocalPipeline
from imgpipe.samples import photo_jpeg
from imgpipe.store.db import make_engine, make_sessions

BENCH_TENANT = "bench"
PROMPT = "a watercolor painting"
DEFAULT_RESULTS = Path("docs/bench/ingest.json")
WRK_TIMEOUT_SECONDS = 60  # wrk's default of 2 s would drop slow answers from the latencies
LOAD_GENERATOR = "load generator"
# Not ingest: stopped during the measurements unless asked to run (stages="running").
STAGE_SERVICES = ("detect", "generate", "matte", "callback")

# wrk script: POSTs the body file with the API key, counts answers by status across threads and
# prints one JSON line. Latencies in wrk are microseconds.
_WRK_SCRIPT = """
local body_file, api_key = %(body_file)s, %(api_key)s
local file = assert(io.open(body_file, "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. api_key

local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) accepted, rate_limited, other = 0, 0, 0 end
function response(status, headers, body)
  if status == 202 then accepted = accepted + 1
  elseif status == 429 then rate_limited = rate_limited + 1
  else other = other + 1 end
end
function done(summary, latency, requests)
  local a, r, o = 0, 0, 0
  for _, t in ipairs(threads) do
    a, r, o = a + t:get("accepted"), r + t:get("rate_limited"), o + t:get("other")
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"duration_us": %%d, "requests": %%d, "accepted": %%d, "rate_limited": %%d, '
    .. '"other_status": %%d, "errors": {"connect": %%d, "read": %%d, "write": %%d, "timeout": %%d}, '
    .. '"latency_us": {"mean": %%.1f, "p50": %%d, "p95": %%d, "p99": %%d, "max": %%d}}\\n',
    summary.duration, summary.requests, a, r, o, e.connect, e.read, e.write, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max))
end
"""


def _lua_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def bench_tenant(sessions: sessionmaker[Session], tenant_id: str = BENCH_TENANT) -> str:
    """Create (or update) the bench tenant with limits no run reaches; returns a new API key."""
    with sessions.begin() as session:
        return create_tenant(
            session,
            tenant_id,
            "benchmarks",
            rate_per_second=1_000_000,
            burst=1_000_000,
            batch_rate_per_second=1_000_000,
            batch_burst=1_000_000,
        )


def submission(time_limit: float | None) -> dict[str, Any]:
    """The body every benchmark submission carries: the cat photo inline, one prompt."""
    return TaskRequest(PROMPT, image=photo_jpeg(), time_limit_seconds=time_limit or None).body()


class Accounting:
    """One ProcessSampler over the pipeline's services, the stack's servers and the load generator,
    reported per group."""

    def __init__(self, pipeline: LocalPipeline, interval: float = 0.2) -> None:
        self.labels: dict[int, str] = {
            pid: name for name, pid in service_pids(pipeline.stack_name).items()
        } | {pid: name for name, pid in server_pids(pipeline.stack_name).items()}
        self._roots = list(self.labels)
        self.sampler = ProcessSampler(lambda: list(self._roots), interval)

    def add_load_generator(self, pid: int) -> None:
        """Account this process too (from its next sample on), as the load generator."""
        self.labels[pid] = LOAD_GENERATOR
        self._roots.append(pid)

    def __enter__(self) -> Accounting:
        self._machine_before = psutil.cpu_times()
        self.sampler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sampler.stop()
        self._machine_after = psutil.cpu_times()

    def report(self, accepted: int) -> dict[str, Any]:
        """CPU seconds and peak RSS per service, server and the load generator; the system's (all
        but the load generator) CPU milliseconds per accepted task."""
        groups: dict[str, dict[str, float | int]] = {}
        for root, figures in self.sampler.by_root().items():
            groups[self.labels.get(root, str(root))] = {
                "cpu_seconds": round(figures["cpu_seconds"], 3),
                "peak_rss_bytes": int(figures["peak_rss_bytes"]),
            }
        system = [figures for name, figures in groups.items() if name != LOAD_GENERATOR]
        system_cpu = sum(figures["cpu_seconds"] for figures in system)
        machine_cpu = _busy(self._machine_after) - _busy(self._machine_before)
        sampled = system_cpu + float(groups.get(LOAD_GENERATOR, {}).get("cpu_seconds", 0.0))
        return {
            "processes": groups,
            "system_cpu_seconds": round(system_cpu, 3),
            # Peaks of the parts, summed: an upper bound of the system's peak at one moment.
            "system_peak_rss_bytes": sum(int(figures["peak_rss_bytes"]) for figures in system),
            "system_cpu_ms_per_accepted": round(1000 * system_cpu / accepted, 2) if accepted else None,
            "load_generator_cpu_seconds": groups.get(LOAD_GENERATOR, {}).get("cpu_seconds"),
            # The whole machine's busy CPU, and what of it ran outside the processes above (other
            # work sharing the cores, the kernel's own threads): large values mean a disturbed run.
            "machine_cpu_seconds": round(machine_cpu, 3),
            "other_cpu_seconds": round(max(0.0, machine_cpu - sampled), 3),
            "other_cpu_share": round(max(0.0, machine_cpu - sampled) / machine_cpu, 3)
            if machine_cpu
            else None,
            "load_average_1m": round(os.getloadavg()[0], 2),
            "wall_seconds": round(self.sampler.wall_seconds, 3),
        }


def _busy(times: Any) -> float:
    """CPU seconds the machine spent on anything but idling (all cores)."""
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


# -- HTTP --------------------------------------------------------------------------------------


def run_wrk(
    url: str,
    api_key: str,
    body_file: Path,
    seconds: float,
    connections: int,
    progress: Progress | None = None,
    on_start: Callable[[int], None] | None = None,
) -> tuple[dict[str, Any], float]:
    """Run wrk against url (on_start gets its pid); returns its JSON summary and its start time."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            _WRK_SCRIPT % {"body_file": _lua_string(str(body_file)), "api_key": _lua_string(api_key)}
        )
    argv = [
        "wrk",
        "--threads",
        "1",
        "--connections",
        str(connections),
        "--duration",
        f"{max(1, round(seconds))}s",
        "--timeout",
        f"{WRK_TIMEOUT_SECONDS}s",
        "--script",
        script.name,
        url,
    ]
    try:
        started = time.time()
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if on_start is not None:
            on_start(process.pid)
        while process.poll() is None:
            time.sleep(0.5)
            if progress is not None:
                progress.update_to(min(seconds, time.time() - started))
        stdout, stderr = process.communicate()
    finally:
        Path(script.name).unlink(missing_ok=True)
    lines = [line for line in stdout.splitlines() if line.startswith("WRK_JSON ")]
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({process.returncode}):\n{stdout[-2000:]}\n{stderr[-2000:]}")
    summary: dict[str, Any] = json.loads(lines[-1].removeprefix("WRK_JSON "))
    return summary, started


def http_run(
    pipeline: LocalPipeline,
    sessions: sessionmaker[Session],
    api_key: str,
    body_file: Path,
    seconds: float,
    connections: int,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """One closed-loop wrk run against POST /v1/tasks with the sampler running."""
    url = f"{pipeline.api_url}/v1/tasks"
    with Accounting(pipeline) as accounting:
        wrk, started = run_wrk(
            url, api_key, body_file, seconds, connections, progress, accounting.add_load_generator
        )
    duration = wrk["duration_us"] / 1e6
    rows = count_tasks(sessions, BENCH_TENANT, started, started + duration + 5)
    latency = {name: value / 1e6 for name, value in wrk["latency_us"].items()}
    return {
        "connections": connections,
        "seconds": round(duration, 3),
        "requests": wrk["requests"],
        "accepted": wrk["accepted"],
        "rate_limited": wrk["rate_limited"],
        "other_status": wrk["other_status"],
        "socket_errors": wrk["errors"],
        "task_rows": rows,  # accepted per Postgres, including answers still in flight when wrk stopped
        "accepted_per_second": round(throughput(wrk["accepted"], duration), 2),
        "latency_seconds": {name: round(value, 4) for name, value in latency.items()},
        **accounting.report(wrk["accepted"]),
    }


# -- Submit topic ------------------------------------------------------------------------------


def topic_run(  # noqa: C901 (a measurement script, read top to bottom)
    pipeline: LocalPipeline,
    sessions: sessionmaker[Session],
    body: Mapping[str, Any],
    messages: int,
    accept_timeout: float,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Produce `messages` tasks to the submit topic, then wait until ingest-submit accepted them all."""
    topic = default_registry().name(TopicKey.SUBMIT)
    # What TopicSubmitter configures, and its message: JSON value, idempotency key as the key.
    producer = Producer(
        {
            "bootstrap.servers": pipeline.endpoints.kafka_bootstrap_servers,
            "enable.idempotence": True,
            "linger.ms": 5,
        }
    )
    run = uuid.uuid4().hex[:12]
    prefix = json.dumps({**body, "tenant_id": BENCH_TENANT})[:-1].encode() + b', "idempotency_key": "'
    headers: list[tuple[str, str | bytes | None]] = [(CONTENT_TYPE_HEADER, JSON_CONTENT_TYPE.encode())]
    produced_at: dict[str, float] = {}
    acked_at: dict[str, float] = {}
    errors: list[KafkaError] = []

    def on_delivery(error: KafkaError | None, message: Message) -> None:
        if error is not None:
            errors.append(error)
        else:
            acked_at[(message.key() or b"").decode()] = time.time()

    # Connect and get the idempotent producer's id before the clock starts: one task, not counted.
    warmup = f"warmup-{run}"
    producer.produce(topic, key=warmup.encode(), value=prefix + warmup.encode() + b'"}', headers=headers)
    if producer.flush(30) > 0:
        raise TimeoutError("submit topic: the warm-up message was not acknowledged in 30 s")
    with Accounting(pipeline) as accounting:
        accounting.add_load_generator(os.getpid())  # this process: the producer (and the polling)
        started = time.time()
        for i in range(messages):
            key = f"bench-{run}-{i}"
            value = prefix + key.encode() + b'"}'
            while True:
                try:
                    produced_at[key] = time.time()
                    producer.produce(
                        topic, key=key.encode(), value=value, headers=headers, on_delivery=on_delivery
                    )
                    break
                except BufferError:
                    producer.poll(0.05)
            producer.poll(0)
        if producer.flush(120) > 0:
            raise TimeoutError("submit topic: messages still undelivered after 120 s")
        produced = time.time()
        if progress is not None:
            progress.describe(f"{progress.description.split(':')[0]}: accepting")
        deadline = time.monotonic() + accept_timeout
        accepted = 0
        while accepted < len(acked_at) and time.monotonic() < deadline:
            time.sleep(0.25)
            accepted = count_run(sessions, run, started)
            if progress is not None:
                progress.update_to(accepted)
    if errors:
        raise RuntimeError(f"{len(errors)} submit messages failed: {errors[0]}")
    created = created_times(sessions, run, started)
    if not created:
        raise RuntimeError("no submitted task was accepted")
    last = max(created.values())
    first_accepted = min(created.values())
    ack = [acked_at[key] - produced_at[key] for key in acked_at]
    lag = [created[key] - produced_at[key] for key in created]
    return {
        "messages": messages,
        "acknowledged": len(acked_at),
        "accepted": len(created),
        "produce_seconds": round(produced - started, 3),
        "produced_per_second": round(throughput(len(acked_at), max(acked_at.values()) - started), 2),
        "ack_latency_seconds": _rounded(latency_summary(ack)),
        "accept_seconds": round(last - started, 3),
        # From the first produce to the last row: what a burst of M costs end to end.
        "accepted_per_second": round(throughput(len(created), last - started), 2),
        # Between the first and the last row: the consumer's own rate once it has a backlog.
        "consumer_accepted_per_second": round(throughput(len(created) - 1, last - first_accepted), 2)
        if len(created) > 1 and last > first_accepted
        else None,
        "acceptance_lag_seconds": _rounded(latency_summary(lag)),
        **accounting.report(len(created)),
    }


def _rounded(summary: Mapping[str, Any]) -> dict[str, Any]:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()}


# -- Postgres ----------------------------------------------------------------------------------


def count_tasks(sessions: sessionmaker[Session], tenant: str, since: float, until: float) -> int:
    with sessions() as session:
        return int(
            session.execute(
                text(
                    "SELECT count(*) FROM tasks WHERE tenant_id = :tenant "
                    "AND created_at >= to_timestamp(:since) AND created_at < to_timestamp(:until)"
                ),
                {"tenant": tenant, "since": since, "until": until},
            ).scalar_one()
        )


def count_run(sessions: sessionmaker[Session], run: str, since: float) -> int:
    with sessions() as session:
        return int(
            session.execute(
                text(
                    "SELECT count(*) FROM tasks WHERE tenant_id = :tenant "
                    "AND created_at >= to_timestamp(:since) AND idempotency_key LIKE :keys"
                ),
                {"tenant": BENCH_TENANT, "since": since - 1, "keys": f"bench-{run}-%"},
            ).scalar_one()
        )


def created_times(sessions: sessionmaker[Session], run: str, since: float) -> dict[str, float]:
    with sessions() as session:
        rows = session.execute(
            text(
                "SELECT idempotency_key, created_at FROM tasks WHERE tenant_id = :tenant "
                "AND created_at >= to_timestamp(:since) AND idempotency_key LIKE :keys"
            ),
            {"tenant": BENCH_TENANT, "since": since - 1, "keys": f"bench-{run}-%"},
        ).all()
    return {key: created.timestamp() for key, created in rows if isinstance(created, datetime)}


def wait_quiet(sessions: sessionmaker[Session], timeout: float = 180) -> float:
    """Wait until the relays published every queued message and no bench task is still queued
    (the deadline reaper ended them all), so one measurement does not carry the last one's work;
    returns the seconds waited."""
    started = time.monotonic()
    query = text(
        "SELECT NOT EXISTS (SELECT 1 FROM outbox) AND NOT EXISTS (SELECT 1 FROM tasks "
        "WHERE tenant_id = :tenant AND state IN ('queued', 'processing'))"
    )
    while time.monotonic() - started < timeout:
        with sessions() as session:
            if session.execute(query, {"tenant": BENCH_TENANT}).scalar_one():
                break
        time.sleep(0.5)
    return time.monotonic() - started


@contextlib.contextmanager
def stages_stopped(pipeline: LocalPipeline, services: Sequence[str]) -> Iterator[list[str]]:
    """Stop the given services while the block runs, then start again those that were running."""
    stopped = [service for service in services if pipeline.is_running(service)]
    for service in stopped:
        pipeline.stop(service)
    try:
        yield stopped
    finally:
        for service in stopped:
            pipeline.start(service, wait=False)
        for service in stopped:
            pipeline.wait_ready(service)


# -- The benchmark -----------------------------------------------------------------------------


def run_ingest_bench(
    pipeline: LocalPipeline,
    seconds: float,
    connections: int,
    *,
    repetitions: int = 1,
    topic_messages: int = 2000,
    time_limit: float | None = 1.0,
    stages: Literal["stopped", "running"] = "stopped",
    warmup_seconds: float = 3.0,
    accept_timeout: float = 600.0,
) -> dict[str, Any]:
    """Accepted submits per second and latencies over HTTP (wrk, `connections` connections for
    `seconds`) and over the submit topic (`topic_messages` per run), `repetitions` times each.

    stages="stopped" stops detect, generate, matte and callback for the measurements (ingest alone,
    as it runs on its own pods in a cluster) and starts them again afterwards; "running" leaves them
    competing for the cores with ingest. Returns the parameters, each door's summary across runs
    (Repeated) and the runs themselves."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed: `apt-get install wrk` (Debian's package)")
    engine = make_engine(pipeline.endpoints.database_url, pool_size=1)
    sessions = make_sessions(engine)
    api_key = bench_tenant(sessions)
    body = submission(time_limit)
    http_runs, topic_runs = Repeated(), Repeated()
    try:
        with (
            stages_stopped(pipeline, STAGE_SERVICES if stages == "stopped" else ()),
            tempfile.TemporaryDirectory(prefix="imgpipe-bench-") as tmp,
        ):
            body_file = Path(tmp) / "body.json"
            body_file.write_text(json.dumps(body))
            if warmup_seconds > 0:  # the API's connection pools, the first requests' imports
                run_wrk(f"{pipeline.api_url}/v1/tasks", api_key, body_file, warmup_seconds, connections)
            for rep in range(1, repetitions + 1):
                wait_quiet(sessions)
                label = f"http {connections} conn, run {rep}/{repetitions}"
                with Progress(seconds, label, unit="s") as bar:
                    http_runs.add(http_run(pipeline, sessions, api_key, body_file, seconds, connections, bar))
                wait_quiet(sessions)
                label = f"topic {topic_messages} tasks, run {rep}/{repetitions}"
                with Progress(topic_messages, label, unit="task") as bar:
                    topic_runs.add(topic_run(pipeline, sessions, body, topic_messages, accept_timeout, bar))
    finally:
        engine.dispose()
    return {
        "parameters": {
            "seconds": seconds,
            "connections": connections,
            "repetitions": repetitions,
            "topic_messages": topic_messages,
            "time_limit_seconds": time_limit,
            "stages": stages,
            "image_bytes": len(photo_jpeg()),
            "request_bytes": len(json.dumps(body)),
            "load_generator": "wrk, 1 thread, closed loop",
        },
        "http": http_runs.summary(),
        "topic": topic_runs.summary(),
        "runs": {"http": http_runs.runs, "topic": topic_runs.runs},
    }


def records(result: Mapping[str, Any], system: str = "imgpipe") -> list[dict[str, Any]]:
    """The results-file records (kind "ingest", one per door) of run_ingest_bench's result."""
    http, topic = result["http"], result["topic"]
    keep_http = (
        "accepted_per_second",
        "latency_seconds",
        "system_cpu_ms_per_accepted",
        "other_cpu_share",
        "processes",
    )
    keep_topic = (
        "produced_per_second",
        "accepted_per_second",
        "consumer_accepted_per_second",
        "ack_latency_seconds",
        "acceptance_lag_seconds",
        "system_cpu_ms_per_accepted",
        "other_cpu_share",
        "processes",
    )
    return [
        {
            "kind": "ingest",
            "system": system,
            "door": "http",
            "connections": result["parameters"]["connections"],
        }
        | {key: http[key] for key in keep_http if key in http},
        {
            "kind": "ingest",
            "system": system,
            "door": "topic",
            "messages": result["parameters"]["topic_messages"],
        }
        | {key: topic[key] for key in keep_topic if key in topic},
    ]


def table(rows: list[dict[str, Any]]) -> str:
    """The records as a Markdown table (mean ± stdev over the runs), as docs/benchmarks.md shows them."""

    def cell(value: Any, digits: int = 1) -> str:
        if value is None:
            return ""
        mean, stdev = mean_and_stdev(value)
        return f"{mean:.{digits}f} ± {stdev:.{digits}f}"

    lines = [
        "| door | load | accepted/s | produced/s | p50 s | p99 s | CPU ms per task | other CPU share |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        if row["door"] == "http":
            load = f"{row['connections']} connections"
            latency = row.get("latency_seconds", {})
        else:
            load = f"{row['messages']} tasks"
            latency = row.get("acceptance_lag_seconds", {})
        lines.append(
            f"| {row['door']} | {load} | {cell(row.get('accepted_per_second'))} "
            f"| {cell(row.get('produced_per_second'))} | {cell(latency.get('p50'), 3)} "
            f"| {cell(latency.get('p99'), 3)} | {cell(row.get('system_cpu_ms_per_accepted'))} "
            f"| {cell(row.get('other_cpu_share'), 2)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="dev", help="the local stack the pipeline runs on")
    parser.add_argument("--seconds", type=float, default=20, help="length of each HTTP run")
    parser.add_argument(
        "--connections",
        type=int,
        nargs="+",
        default=[16],
        help="wrk connections (several: one set of runs each)",
    )
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument(
        "--topic-messages", type=int, default=2000, help="tasks produced per submit-topic run"
    )
    parser.add_argument(
        "--time-limit", type=float, default=1.0, help="the tasks' time limit in seconds; 0: the service's"
    )
    parser.add_argument(
        "--stages",
        choices=("stopped", "running"),
        default="stopped",
        help="detect, generate, matte and callback during the runs (stopped: restarted afterwards)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS, help="results JSON (plots read it)")
    args = parser.parse_args()

    pipeline = LocalPipeline.of_stack(args.name)
    machine = machine_facts(pipeline.endpoints.database_url)
    # Stopped (if so) once for every connection count rather than restarted in between.
    with stages_stopped(pipeline, STAGE_SERVICES if args.stages == "stopped" else ()):
        results = [
            run_ingest_bench(
                pipeline,
                args.seconds,
                connections,
                repetitions=args.repetitions,
                topic_messages=args.topic_messages,
                time_limit=args.time_limit or None,
                stages=args.stages,
            )
            for connections in args.connections
        ]
    rows = [record for result in results for record in records(result)]
    payload = {
        "benchmark": "ingest",
        "parameters": {**results[0]["parameters"], "connections": args.connections},
        "records": rows,
        "runs": [result["runs"] for result in results],
    }
    path = write_results(args.out, payload, machine)
    print(table(rows))
    print(f"results: {path}")


if __name__ == "__main__":
    main()
