"""PNG plots of the benchmarks' results files (bench/measure.py's write_results), for docs/benchmarks.md.

    .venv/bin/python -m bench.plots [RESULTS.json ...] [--out docs/bench]

Without arguments it reads every docs/bench/*.json. It draws what the records hold, each plot only
when there are records for it (error bars: the stdev over repetitions):

- throughput.png: tasks/s by system, steady and burst scenarios       (kind "pipeline", local-cpu)
- latency.png:    latency p50/p95/p99 by system, one panel per scenario (kind "pipeline", local-cpu)
- remote-model.png: tasks/s by system and configuration, with the bound (workload "remote-model")
- null-cpu.png:   CPU seconds per task of each whole system            (workload "null")
- callbacks.png:  callbacks/s by URL count, per system and mode       (kind "callbacks")
- ingest.png:     accepted submits/s by front door, per system        (kind "ingest")
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display; before pyplot is imported

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from bench.measure import mean_and_stdev, read_results

DEFAULT_DIR = Path("docs/bench")
SCENARIOS = ("steady", "burst")
PERCENTILES = ("p50", "p95", "p99")
SYSTEM_ORDER = ("imgpipe", "celery-redis", "celery", "compute-bound")
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
HATCHES = ("", "//", "..", "xx")
# No software version or date in the files: the same results give the same bytes.
PNG_METADATA: dict[str, str | None] = {"Software": None}

Metric = tuple[float, float] | None  # mean and stdev, or nothing measured


def load_records(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """Every record of the given results files, in file order (a later record for the same thing
    is drawn instead of an earlier one)."""
    found: list[dict[str, Any]] = []
    for path in paths:
        found.extend(read_results(path).get("records", []))
    return found


def metric(record: Mapping[str, Any] | None, *path: str) -> Metric:
    value: Any = record
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    try:
        return mean_and_stdev(value)
    except ValueError:
        return None


def systems(records: Sequence[Mapping[str, Any]]) -> list[str]:
    present = {str(record.get("system", "?")) for record in records}
    ordered = [name for name in SYSTEM_ORDER if name in present]
    return ordered + sorted(present - set(ordered))


def grouped_bars(
    ax: Axes,
    groups: Sequence[str],
    series: Mapping[str, Sequence[Metric]],
    styles: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """One cluster of bars per group, one bar per series, stdev as error bars, the mean on top.
    `styles` gives a series bar options (color, hatch); by default each series has its own color."""
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        means = [v[0] if v is not None else 0.0 for v in values]
        errors = [v[1] if v is not None else 0.0 for v in values]
        style = (styles or {}).get(name, {"color": COLORS[i % len(COLORS)]})
        bars = ax.bar(xs, means, width, yerr=errors, capsize=3, label=name, **style)
        for bar, value in zip(bars, values, strict=True):
            if value is not None:
                ax.annotate(
                    f"{value[0]:.3g}",
                    (bar.get_x() + bar.get_width() / 2, value[0] + value[1]),
                    xytext=(0, 2),
                    textcoords="offset points",
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
    ax.set_xticks(range(len(groups)), list(groups))
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def workload_of(record: Mapping[str, Any]) -> str:
    """A pipeline record's workload; records from before workloads were all local-cpu."""
    return str(record.get("workload") or "local-cpu")


def pipeline_records(records: Iterable[Mapping[str, Any]], workload: str) -> list[Mapping[str, Any]]:
    return [r for r in records if r.get("kind") == "pipeline" and workload_of(r) == workload]


def _latest(
    records: Iterable[Mapping[str, Any]], workload: str | None = None, **match: Any
) -> Mapping[str, Any] | None:
    """The last record matching every `match` (and, for pipeline records, of `workload`)."""
    chosen = None
    for record in records:
        if workload is not None and record.get("kind") == "pipeline" and workload_of(record) != workload:
            continue
        if all(record.get(key) == value for key, value in match.items()):
            chosen = record
    return chosen


def _label(record: Mapping[str, Any]) -> str:
    config = record.get("config")
    return f"{record['system']}\n{config}" if config else str(record["system"])


def _by_label(records: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """The last record of each system and configuration, in system order."""
    order = {name: i for i, name in enumerate(systems(records))}
    latest: dict[str, Mapping[str, Any]] = {}
    for record in records:
        latest[_label(record)] = record
    return dict(sorted(latest.items(), key=lambda item: order[str(item[1].get("system", "?"))]))


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata=PNG_METADATA)
    plt.close(fig)
    return path


def plot_throughput(records: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    pipeline = pipeline_records(records, "local-cpu")
    scenarios = [s for s in SCENARIOS if any(r.get("scenario") == s for r in pipeline)]
    if not scenarios:
        return None
    names = systems(pipeline)
    series = {
        name: [
            metric(_latest(pipeline, "local-cpu", system=name, scenario=scenario), "tasks_per_second")
            for scenario in scenarios
        ]
        for name in names
    }
    fig, ax = plt.subplots(figsize=(6, 4))
    grouped_bars(ax, scenarios, series)
    ax.set_ylabel("tasks/s")
    ax.set_title("Pipeline throughput (mean ± stdev over repetitions)")
    ax.legend()
    return _save(fig, path)


def plot_latency(records: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    pipeline = pipeline_records(records, "local-cpu")
    scenarios = [s for s in SCENARIOS if any(r.get("scenario") == s for r in pipeline)]
    if not scenarios:
        return None
    names = systems(pipeline)
    fig, axes = plt.subplots(1, len(scenarios), figsize=(5 * len(scenarios), 4), squeeze=False)
    for ax, scenario in zip(axes[0], scenarios, strict=True):
        series = {
            name: [
                metric(_latest(pipeline, "local-cpu", system=name, scenario=scenario), "latency_seconds", p)
                for p in PERCENTILES
            ]
            for name in names
        }
        grouped_bars(ax, PERCENTILES, series)
        ax.set_title(f"{scenario}: task latency")
        ax.set_ylabel("seconds")
        ax.legend()
    return _save(fig, path)


def plot_remote_model(records: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    chosen = _by_label(pipeline_records(records, "remote-model"))
    if not chosen:
        return None
    labels = list(chosen)
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(labels)), 4))
    grouped_bars(ax, labels, {"tasks/s": [metric(r, "tasks_per_second") for r in chosen.values()]})
    bound = next((r.get("bound_tasks_per_second") for r in chosen.values()), None)
    if isinstance(bound, int | float):
        ax.axhline(bound, color="black", linestyle="--", linewidth=1, label=f"bound {bound:g}/s")
    ax.tick_params(axis="x", labelsize=7)
    ax.set_ylabel("tasks/s")
    ax.set_title("Remote model (simulated server): throughput of a burst")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_null_cpu(records: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    chosen = _by_label(pipeline_records(records, "null"))
    if not chosen:
        return None
    labels = list(chosen)
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(labels)), 4))
    grouped_bars(ax, labels, {"CPU s/task": [metric(r, "cpu_seconds_per_task") for r in chosen.values()]})
    ax.tick_params(axis="x", labelsize=8)
    ax.set_ylabel("CPU seconds per task (whole system)")
    ax.set_title("Null backends: the platform's own CPU per task")
    return _save(fig, path)


def plot_callbacks(records: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    callbacks = [r for r in records if r.get("kind") == "callbacks"]
    if not callbacks:
        return None
    urls = sorted({int(r["urls"]) for r in callbacks})
    modes = sorted({str(r["mode"]) for r in callbacks})
    names = systems(callbacks)
    series = {
        f"{name}, {mode}": [
            metric(_latest(callbacks, system=name, mode=mode, urls=count), "callbacks_per_second")
            for count in urls
        ]
        for name in names
        for mode in modes
    }
    # A color per system, a hatch per mode.
    styles = {
        f"{name}, {mode}": {"color": COLORS[i % len(COLORS)], "hatch": HATCHES[j % len(HATCHES)]}
        for i, name in enumerate(names)
        for j, mode in enumerate(modes)
    }
    fig, ax = plt.subplots(figsize=(7, 4))
    grouped_bars(ax, [f"{count} URL{'s' if count != 1 else ''}" for count in urls], series, styles)
    ax.set_ylabel("callbacks/s")
    ax.set_title("Callback delivery by URL count and mode")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_ingest(records: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    ingest = [r for r in records if r.get("kind") == "ingest"]
    if not ingest:
        return None

    def door(record: Mapping[str, Any]) -> str:
        if record.get("door") == "http" and "connections" in record:
            return f"HTTP, {record['connections']} conn."
        return str(record.get("door"))

    doors = list(dict.fromkeys(door(r) for r in ingest))
    names = systems(ingest)
    series = {
        name: [
            metric(
                next((r for r in reversed(ingest) if r.get("system") == name and door(r) == d), None),
                "accepted_per_second",
            )
            for d in doors
        ]
        for name in names
    }
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(doors)), 4))
    grouped_bars(ax, doors, series)
    ax.set_ylabel("accepted submits/s")
    ax.set_title("Ingest: submissions accepted per second")
    ax.legend()
    return _save(fig, path)


PLOTS = {
    "throughput.png": plot_throughput,
    "latency.png": plot_latency,
    "remote-model.png": plot_remote_model,
    "null-cpu.png": plot_null_cpu,
    "callbacks.png": plot_callbacks,
    "ingest.png": plot_ingest,
}


def plot_all(results: Iterable[Path], out_dir: Path = DEFAULT_DIR) -> list[Path]:
    """Draw every plot the results have records for into out_dir; returns the files written."""
    records = load_records(results)
    written = []
    for name, draw in PLOTS.items():
        path = draw(records, out_dir / name)
        if path is not None:
            written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "results", type=Path, nargs="*", help="results JSON files (default: docs/bench/*.json)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR, help="where the PNGs go")
    args = parser.parse_args()
    results = args.results or sorted(DEFAULT_DIR.glob("*.json"))
    if not results:
        parser.error(f"no results files given and none in {DEFAULT_DIR}")
    for path in plot_all(results, args.out):
        print(path)


if __name__ == "__main__":
    main()
