"""The generated parts of docs/benchmarks.md, from a results file of bench/suite.py, and the summary
of a py-spy profile.

Only the text between `<!-- bench:begin -->` and `<!-- bench:end -->` is replaced, so the prose
around it (what the figures mean, what would close a gap) stays as written.
"""

from __future__ import annotations

import collections
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench import ingest
from bench.measure import mean_and_stdev, read_results

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
SYSTEMS = ("imgpipe", "celery-redis", "compute-bound")


def update_benchmarks_doc(results_path: Path, doc_path: Path) -> None:
    document = read_results(results_path)
    generated = "\n".join([BEGIN, render(document, results_path, doc_path.parent), END])
    text = doc_path.read_text() if doc_path.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip() + f"\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    doc_path.write_text(head + generated + tail)


def render(document: Mapping[str, Any], results_path: Path, doc_dir: Path) -> str:
    machine = document["machine"]
    records = document["records"]
    relative = results_path.relative_to(doc_dir) if results_path.is_relative_to(doc_dir) else results_path
    lines = [
        f"Produced by `{document.get('command', 'make bench')}` on {machine['date']}; raw results in "
        f"[{relative}]({relative}).",
        "",
        _machine_line(machine),
        "",
        "### Pipeline: imgpipe, the Celery + Redis baseline and the compute bound",
        "",
        "Mean ± standard deviation over the repetitions (n in the last column). Latency is from the",
        "client's submit to the task's recorded completion; CPU is every process of the system.",
        "",
        "| system | workload | tasks/s | p50 s | p95 s | p99 s | CPU s/task | peak RSS MiB | n |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    everything = [r for r in records if r.get("kind") == "pipeline"]
    pipeline = [r for r in everything if r.get("workload", "local-cpu") == "local-cpu"]
    for record in sorted(pipeline, key=lambda r: (r["scenario"], _order(r["system"]))):
        latency = record["latency_seconds"]
        lines.append(
            "| "
            + " | ".join(
                [
                    record["system"],
                    _workload(record),
                    _pm(record["tasks_per_second"], 2),
                    _pm(latency["p50"], 1),
                    _pm(latency["p95"], 1),
                    _pm(latency["p99"], 1),
                    _pm(record["cpu_seconds_per_task"], 2),
                    _pm(record["peak_rss_mib"], 0),
                    str(record["tasks_per_second"].get("n", 1)),
                ]
            )
            + " |"
        )
    lines += ["", "### Ratios (per repetition, paired by run; mean ± standard deviation)", ""]
    lines += ["| workload | imgpipe / | throughput | p99 latency |", "| --- | --- | --- | --- |"]
    for scenario in sorted({r["scenario"] for r in pipeline}):
        mine = _find(pipeline, "imgpipe", scenario)
        for other in ("celery-redis", "compute-bound"):
            theirs = _find(pipeline, other, scenario)
            if mine is None or theirs is None:
                continue
            throughput = _paired_ratio(mine, theirs, "tasks_per_second")
            p99 = _paired_ratio(mine, theirs, "latency_seconds", "p99")
            lines.append(f"| {_workload(mine)} | {other} | {throughput} | {p99} |")
    lines += _remote_model_table([r for r in everything if r.get("workload") == "remote-model"])
    lines += _null_table([r for r in everything if r.get("workload") == "null"])
    lines += _callback_table([r for r in records if r.get("kind") == "callbacks"])
    lines += _ingest_table([r for r in records if r.get("kind") == "ingest"])
    plots = sorted(p.name for p in results_path.parent.glob("*.png"))
    if plots:
        lines += ["", "### Plots", ""]
        lines += [f"![{name}](bench/{name})" for name in plots]
    return "\n".join(lines) + "\n"


def label(record: Mapping[str, Any]) -> str:
    """A pipeline record's system and configuration, e.g. `celery-redis (threads x 16)`."""
    config = record.get("config")
    return f"{record['system']} ({config})" if config else str(record["system"])


def _ordered(records: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return sorted(records, key=lambda r: _order(r["system"]))  # stable: configurations as run


def _remote_model_table(records: list[Mapping[str, Any]]) -> list[str]:
    if not records:
        return []
    bound = float(records[0]["bound_tasks_per_second"])
    server = records[0].get("model_server", {})
    lines = [
        "",
        "### Remote model: the stages' HTTP backends against a simulated model server",
        "",
        f"A burst of {_workload(records[0]).removeprefix('burst of ')} tasks; every model call holds one of "
        f"{server.get('slots')} slots per model for {server.get('service_time_seconds')} s and burns no CPU,",
        f"so the bound is {bound:g} tasks/s. Requests in flight per process and model server",
        f"(IMGPIPE_MODEL_MAX_CONCURRENCY): {records[0].get('model_max_concurrency')} in both systems. "
        "*The best of the Celery threads sweep.",
        "",
        "| system | tasks/s | share of bound | p50 s | p95 s | p99 s | CPU s/task | n |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for record in _ordered(records):
        latency = record["latency_seconds"]
        share = mean_and_stdev(record["tasks_per_second"])[0] / bound if bound else 0.0
        star = "*" if record.get("best_celery") else ""
        cells = [
            label(record) + star,
            _pm(record["tasks_per_second"], 2),
            f"{share:.0%}",
            _pm(latency["p50"], 1),
            _pm(latency["p95"], 1),
            _pm(latency["p99"], 1),
            _pm(record["cpu_seconds_per_task"], 3),
            _n(record["tasks_per_second"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _null_table(records: list[Mapping[str, Any]]) -> list[str]:
    if not records:
        return []
    lines = [
        "",
        "### Null backends: the platform's own CPU per task",
        "",
        f"A burst of {_workload(records[0]).removeprefix('burst of ')} tasks with no model work. CPU is "
        "every process of the system: imgpipe's services, Kafka, Postgres and MinIO; the baseline's worker",
        "and pool, redis-server, the callback sender and Postgres (it keeps images on the filesystem).",
        "",
        "| system | CPU s/task | tasks/s | p99 s | peak RSS MiB | largest CPU shares | n |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for record in _ordered(records):
        by_process = record.get("cpu_seconds_by_process") or {}
        means = {name: mean_and_stdev(value)[0] for name, value in by_process.items()}
        total = sum(means.values()) or 1.0
        top = ", ".join(
            f"{name} {v / total:.0%}" for name, v in sorted(means.items(), key=lambda kv: -kv[1])[:3]
        )
        cells = [
            label(record),
            _pm(record["cpu_seconds_per_task"], 3),
            _pm(record["tasks_per_second"], 2),
            _pm(record["latency_seconds"]["p99"], 1),
            _pm(record["peak_rss_mib"], 0),
            top or "-",
            _n(record["tasks_per_second"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _callback_table(records: list[Mapping[str, Any]]) -> list[str]:
    if not records:
        return []
    limit = records[0]["receiver_limit_per_second"]
    lines = [
        "",
        "### Callback delivery",
        "",
        f"Callbacks/s until the last one arrived. Each receiver's limit: {limit}/s with a burst of {limit}",
        f"(imgpipe's policy), so at most {2 * limit} requests in any second; the old sender has no per-URL",
        "limit, only its global pace. *Stopped at the time cap; the rate is what it sent until then.",
        "",
        "| URLs | mode | imgpipe callbacks/s | old sender callbacks/s | imgpipe / old | "
        "receivers over their limit (imgpipe, old) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    keyed = {(r["system"], r["urls"], r["mode"]): r for r in records}
    for mode in ("immediate", "batched"):
        for urls in sorted({r["urls"] for r in records}):
            mine, old = keyed.get(("imgpipe", urls, mode)), keyed.get(("celery-redis", urls, mode))
            if mine is None or old is None:
                continue
            star = "" if old.get("finished", True) else "*"
            lines.append(
                f"| {urls} | {mode} | {mine['callbacks_per_second']:.1f} | "
                f"{old['callbacks_per_second']:.1f}{star} | "
                f"{_ratio(mine['callbacks_per_second'], old['callbacks_per_second'])} | "
                f"{mine['share_of_receivers_over_limit']:.0%}, {old['share_of_receivers_over_limit']:.0%} |"
            )
    return lines


def _ingest_table(records: list[dict[str, Any]]) -> list[str]:
    if not records:
        return []
    return ["", "### Ingest", "", ingest.table(records)]


def _ratio(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.1f}" if denominator else "-"


def _machine_line(machine: Mapping[str, Any]) -> str:
    servers = ", ".join(f"{name} {version}" for name, version in machine.get("servers", {}).items())
    return (
        f"Machine: {machine.get('cpu_model')}, {machine.get('logical_cores')} cores, "
        f"{machine.get('ram_bytes', 0) / 2**30:.0f} GiB RAM, {machine.get('os')}, Python "
        f"{machine.get('python')}; {servers}; load average at the end {machine.get('load_average')}; "
        f"commit {machine.get('git', {}).get('commit', '?')[:10]}."
    )


def _workload(record: Mapping[str, Any]) -> str:
    tasks = f"{mean_and_stdev(record['tasks'])[0]:g}"  # the same in every run, so summarized as a metric
    if record["scenario"] == "burst":
        return f"burst of {tasks}"
    return f"{tasks} at {mean_and_stdev(record['rate_per_second'])[0]:g}/s"


def _order(system: str) -> int:
    return SYSTEMS.index(system) if system in SYSTEMS else len(SYSTEMS)


def _find(records: Iterable[Mapping[str, Any]], system: str, scenario: str) -> Mapping[str, Any] | None:
    return next((r for r in records if r["system"] == system and r["scenario"] == scenario), None)


def _paired_ratio(mine: Mapping[str, Any], theirs: Mapping[str, Any], *path: str) -> str:
    def values(record: Mapping[str, Any]) -> list[float]:
        out = []
        for run in record["runs"]:
            value: Any = run
            for key in path:
                value = value[key]
            out.append(float(value))
        return out

    ratios = [a / b for a, b in zip(values(mine), values(theirs), strict=False) if b]
    if not ratios:
        return "-"
    spread = statistics.stdev(ratios) if len(ratios) > 1 else 0.0
    return f"{statistics.fmean(ratios):.2f} ± {spread:.2f}"


def _pm(value: Any, digits: int) -> str:
    if value is None:
        return "-"
    mean, stdev = mean_and_stdev(value)
    return f"{mean:.{digits}f} ± {stdev:.{digits}f}"


def _n(value: Any) -> str:
    return str(value.get("n", 1)) if isinstance(value, Mapping) else "1"


# -- profiles ------------------------------------------------------------------------------------


def write_profile_summary(raw: Path, path: Path, service: str, top: int = 15) -> None:
    """py-spy's raw (collapsed) stacks as two top lists: where samples were (self) and which
    functions they were under (inclusive)."""
    stacks = _collapsed(raw.read_text().splitlines()) if raw.exists() else []
    total = sum(count for _, count in stacks) or 1
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    for frames, count in stacks:
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    lines = [f"py-spy profile of `imgpipe {service}` during a burst ({total} samples at 50 Hz)", ""]
    lines += ["Self (where the samples were):", *_top(own, total, top)]
    lines += ["", "Inclusive (what they were under):", *_top(inclusive, total, top)]
    path.write_text("\n".join(lines) + "\n")


def _collapsed(lines: Sequence[str]) -> list[tuple[list[str], int]]:
    stacks = []
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def _top(counter: collections.Counter[str], total: int, top: int) -> list[str]:
    return [f"  {100 * count / total:5.1f}%  {frame}" for frame, count in counter.most_common(top)]
