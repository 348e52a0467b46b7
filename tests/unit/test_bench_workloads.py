"""The benchmark suite's workloads: records tagged by workload, merged in order, reported apart."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # `bench` is run from the repository root
from bench import pipelines, plots, report
from bench import suite as bench_suite
from bench.measure import summarize

pytestmark = pytest.mark.unit


def record(workload: str, system: str, config: str | None, tps: float, **extra: Any) -> dict[str, Any]:
    latency = {p: summarize([1.0]) for p in ("p50", "p95", "p99")}
    return {
        "kind": "pipeline",
        "workload": workload,
        "system": system,
        "config": config,
        "scenario": "burst",
        "tasks": summarize([200.0]),
        "rate_per_second": None,
        "tasks_per_second": summarize([tps]),
        "latency_seconds": latency,
        "cpu_seconds_per_task": summarize([0.1]),
        "peak_rss_mib": summarize([100.0]),
        "cpu_seconds_by_process": {"java": summarize([3.0]), "postgres": summarize([1.0])},
        "runs": [],
        **extra,
    }


def test_settings_for_the_workloads() -> None:
    remote = pipelines.remote_model_settings("http://127.0.0.1:9")
    assert remote["IMGPIPE_DETECT_BACKEND"] == remote["IMGPIPE_MATTE_BACKEND"] == "http"
    assert remote["IMGPIPE_GENERATE_URL"] == "http://127.0.0.1:9"
    assert remote["IMGPIPE_MODEL_MAX_CONCURRENCY"] == str(pipelines.MODEL_MAX_CONCURRENCY)
    assert set(pipelines.null_settings().values()) == {"null"}


def test_only_part_keeps_the_other_records_with_local_cpu_first(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    old_local = record("local-cpu", "imgpipe", None, 1.0)
    del old_local["workload"]  # a results file from before workloads
    old_remote = record("remote-model", "imgpipe", "max in flight 16", 10.0)
    path.write_text(json.dumps({"records": [old_remote, {"kind": "ingest", "system": "imgpipe"}, old_local]}))
    new_remote = record("remote-model", "imgpipe", "max in flight 16", 15.0)
    merged = bench_suite.merge_records(path, {"remote-model": [new_remote]})
    assert [bench_suite.part_of(r) for r in merged] == ["local-cpu", "remote-model", "ingest"]
    assert merged[0]["workload"] == "local-cpu"
    assert merged[1]["tasks_per_second"]["mean"] == 15.0


def test_the_best_of_the_sweep_is_marked() -> None:
    records = [
        record("remote-model", "celery-redis", "threads x 4", 5.0),
        record("remote-model", "celery-redis", "threads x 8", 10.0),
        record("remote-model", "celery-redis", "threads x 16", 14.0),
    ]
    bench_suite.mark_best_sweep(records, [8, 16])
    assert "best_celery" not in records[0]
    assert [r["best_celery"] for r in records[1:]] == [False, True]


def test_plots_and_report_keep_the_workloads_apart(tmp_path: Path) -> None:
    records = [
        record("local-cpu", "imgpipe", None, 1.0),
        record("remote-model", "imgpipe", "max in flight 16", 15.0, bound_tasks_per_second=16.0),
        record("null", "imgpipe", "null backends", 20.0),
    ]
    assert plots._latest(records, "local-cpu", system="imgpipe", scenario="burst") is records[0]
    document = {"machine": {"date": "today"}, "records": records}
    text = report.render(document, tmp_path / "results.json", tmp_path)
    assert "### Remote model" in text and "94%" in text  # 15 of the bound's 16 tasks/s
    assert "### Null backends" in text and "java 75%" in text
    local_table = text.split("### Ratios")[0]
    assert "15.00" not in local_table and "20.00" not in local_table
    written = plots.plot_all([], tmp_path)
    assert written == []
