"""The Grafana dashboard the chart ships (charts/imgpipe/dashboards/imgpipe.json), generated from the
panel list below so that a panel is one line to add.

    python -m imgpipe.deploytools.dashboard            # rewrite the JSON
    python -m imgpipe.deploytools.dashboard --check    # exit 1 when the JSON is stale (tests/chart)

tests/chart also checks that every metric a panel queries is one the code defines.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, NamedTuple

from imgpipe.localstack.layout import repo_root

DASHBOARD = Path("charts/imgpipe/dashboards/imgpipe.json")
NS = 'namespace=~"$namespace"'
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


class Panel(NamedTuple):
    title: str
    unit: str
    expr: str
    legend: str


class Row(NamedTuple):
    title: str


def rate(metric: str, by: str, selector: str = "") -> str:
    return f"sum by ({by}) (rate({metric}{{{NS}{selector}}}[5m]))"


def quantile(q: float, histogram: str, by: str) -> str:
    group = f"{by}, le" if by else "le"
    return f"histogram_quantile({q}, sum by ({group}) (rate({histogram}_bucket{{{NS}}}[5m])))"


LAYOUT: tuple[Row | Panel, ...] = (
    Row("Throughput"),
    Panel(
        "API submissions by outcome",
        "reqps",
        rate("imgpipe_api_submits_total", "route, outcome"),
        "{{route}} {{outcome}}",
    ),
    Panel(
        "Stage outcomes", "ops", rate("imgpipe_stage_tasks_total", "stage, outcome"), "{{stage}} {{outcome}}"
    ),
    Panel(
        "Consumer messages by outcome",
        "ops",
        rate("imgpipe_consumer_messages_total", "group, outcome"),
        "{{group}} {{outcome}}",
    ),
    Panel(
        "Dead-lettered messages",
        "ops",
        rate("imgpipe_consumer_messages_total", "group, topic", ', outcome="dead_lettered"'),
        "{{group}} from {{topic}}",
    ),
    Row("Latency"),
    Panel(
        "Stage duration p95", "s", quantile(0.95, "imgpipe_stage_duration_seconds", "stage"), "{{stage}} p95"
    ),
    Panel(
        "Stage duration p50", "s", quantile(0.5, "imgpipe_stage_duration_seconds", "stage"), "{{stage}} p50"
    ),
    Panel(
        "Handler duration p95 by group",
        "s",
        quantile(0.95, "imgpipe_handler_duration_seconds", "group"),
        "{{group}}",
    ),
    Panel("Prefer: wait hold time p95", "s", quantile(0.95, "imgpipe_api_prefer_wait_seconds", ""), "p95"),
    Row("Backlog"),
    Panel(
        "Consumer lag by group and topic",
        "short",
        f"sum by (group, topic) (imgpipe_consumer_lag{{{NS}}})",
        "{{group}} {{topic}}",
    ),
    Panel(
        "Retry-tier partitions held until due",
        "short",
        f"sum by (group) (imgpipe_retry_held_partitions{{{NS}}})",
        "{{group}}",
    ),
    Row("Ingest"),
    Panel("Outbox messages published", "ops", rate("imgpipe_outbox_published_total", "topic"), "{{topic}}"),
    Panel("Projector task updates", "ops", rate("imgpipe_projector_updates_total", "kind"), "{{kind}}"),
    Panel(
        "Tasks failed by the deadline reaper",
        "short",
        f"sum(increase(imgpipe_tasks_reaped_total{{{NS}}}[1h]))",
        "last hour",
    ),
    Panel("Callback policy writes", "ops", rate("imgpipe_callback_policy_writes_total", "kind"), "{{kind}}"),
    Panel(
        "Callback replays", "short", f"sum(increase(imgpipe_callback_replays_total{{{NS}}}[1h]))", "last hour"
    ),
    Row("Callbacks"),
    Panel(
        "Deliveries by verdict", "reqps", rate("imgpipe_callback_deliveries_total", "verdict"), "{{verdict}}"
    ),
    Panel(
        "Callbacks ended by outcome", "ops", rate("imgpipe_callback_outcomes_total", "outcome"), "{{outcome}}"
    ),
    Panel("Delivery latency p95", "s", quantile(0.95, "imgpipe_callback_delivery_seconds", ""), "p95"),
    Panel("Results per request p95", "short", quantile(0.95, "imgpipe_callback_batch_size", ""), "p95"),
    Panel(
        "Queued results by state",
        "short",
        f"sum by (state) (imgpipe_callback_queue_depth{{{NS}}})",
        "{{state}}",
    ),
    Panel(
        "Rate-limit deferrals", "ops", rate("imgpipe_callback_rate_limited_total", "namespace"), "deferred"
    ),
    Panel("Open circuit breakers", "short", f"sum(imgpipe_callback_open_breakers{{{NS}}})", "URLs"),
    Panel("Receivers disabled (410)", "short", f"sum(imgpipe_callback_disabled_urls{{{NS}}})", "URLs"),
)


def build() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    y, x = 0, 0
    for index, item in enumerate(LAYOUT, start=1):
        if isinstance(item, Row):
            y += 8 if x else 0
            x = 0
            grid = {"h": 1, "w": 24, "x": 0, "y": y}
            panels.append(
                {"id": index, "type": "row", "title": item.title, "collapsed": False, "gridPos": grid}
            )
            y += 1
            continue
        panels.append(
            {
                "id": index,
                "type": "timeseries",
                "title": item.title,
                "datasource": DATASOURCE,
                "fieldConfig": {"defaults": {"unit": item.unit}, "overrides": []},
                "options": {
                    "legend": {"displayMode": "list", "placement": "bottom"},
                    "tooltip": {"mode": "multi"},
                },
                "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
                "targets": [
                    {"refId": "A", "expr": item.expr, "legendFormat": item.legend, "datasource": DATASOURCE}
                ],
            }
        )
        y, x = (y + 8, 0) if x else (y, 12)
    namespace_query = "label_values(imgpipe_consumer_messages_total, namespace)"
    return {
        "uid": "imgpipe-overview",
        "title": "imgpipe",
        "description": "Throughput, latency, backlog (generated by imgpipe.deploytools.dashboard).",
        "tags": ["imgpipe"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"},
                {
                    "name": "namespace",
                    "type": "query",
                    "label": "Namespace",
                    "datasource": DATASOURCE,
                    "query": {"query": namespace_query, "refId": "namespace"},
                    "definition": namespace_query,
                    "includeAll": True,
                    "multi": True,
                    "refresh": 2,
                },
            ]
        },
        "annotations": {"list": []},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 when the committed JSON is stale")
    args = parser.parse_args(argv)
    root = repo_root()
    if root is None:
        print("run from a checkout (the dashboard lives in charts/)", file=sys.stderr)
        return 2
    path = root / DASHBOARD
    if args.check:
        if not path.is_file() or path.read_text() != render():
            print(f"{DASHBOARD} is stale: run python -m imgpipe.deploytools.dashboard", file=sys.stderr)
            return 1
        return 0
    path.write_text(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
