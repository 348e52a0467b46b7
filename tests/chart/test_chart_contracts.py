"""The chart against the code: every container runs a real subcommand, sets only settings that command
reads (with values its validation accepts), probes and scrapes what it serves on the port it binds,
and KEDA watches the consumer group and topics the code subscribes with. The dashboard queries only
metrics the code defines.

The callback app is being written: its checks xfail until `imgpipe callback` is a subcommand, and
then run like every other component's.
"""

from __future__ import annotations

import functools
import importlib
import re
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from chartkit import CHART, FULL, REPO, Manifests, container, render, resolved_env
from code_capture import Capture, run_until_serving, subcommands
from prometheus_client import REGISTRY

from imgpipe.cli import build_parser
from imgpipe.runtime.health import Health
from imgpipe.runtime.settings import ENV_PREFIX, RuntimeSettings

pytestmark = pytest.mark.chart

VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
# Names from values.yaml (parsed, not rendered: helm is installed after collection).
COMPONENTS = sorted(VALUES["components"])
JOBS = sorted(VALUES["jobs"])

# What the pods would read from Secrets; each must pass the setting's validation.
SECRET_STAND_INS = {
    "IMGPIPE_KAFKA_CLIENT_CONFIG": "{}",
    "IMGPIPE_DATABASE_URL": "postgresql+psycopg://imgpipe:stand-in@127.0.0.1:1/imgpipe",
}


def secret_stand_in(variable: str) -> str:
    return SECRET_STAND_INS.get(variable, "stand-in-secret")


@functools.cache
def full() -> Manifests:
    """The value set with every component (the callback included) and every option on."""
    return render([FULL])


def skip_until_callback_exists(component: str) -> None:
    if component == "callback" and "callback" not in subcommands():
        pytest.xfail("`imgpipe callback` is not a subcommand yet; this passes once it is")


def deployment_of(component: str) -> dict[str, Any]:
    return full().components()[component]


def job_of(job: str) -> dict[str, Any]:
    (found,) = [doc for doc in full().of_kind("Job") if doc["metadata"]["name"].endswith(f"-{job}")]
    return found


def pod_env(workload: dict[str, Any]) -> dict[str, str]:
    return resolved_env(full(), workload["spec"]["template"]["spec"], secret_stand_in)


@functools.cache
def capture(component: str) -> Capture:
    deployment = deployment_of(component)
    return run_until_serving(container(deployment["spec"]["template"]["spec"])["args"], pod_env(deployment))


def setting_variables(settings_class: type[RuntimeSettings]) -> set[str]:
    return {ENV_PREFIX + name.upper() for name in settings_class.model_fields}


def imgpipe_variables(env: dict[str, str]) -> set[str]:
    return {name for name in env if name.startswith(ENV_PREFIX)}


# --- components ----------------------------------------------------------------------------------


@pytest.mark.parametrize("component", COMPONENTS)
def test_container_runs_a_real_subcommand(component: str) -> None:
    skip_until_callback_exists(component)
    args = container(deployment_of(component)["spec"]["template"]["spec"])["args"]
    parsed = build_parser().parse_args(args)
    assert callable(parsed.handler)


@pytest.mark.parametrize("component", COMPONENTS)
def test_env_names_are_settings_the_command_reads(component: str) -> None:
    skip_until_callback_exists(component)
    captured = capture(component)  # also proves the chart's values pass the settings' validation
    assert captured.settings_class is not None, "the command loaded no settings"
    unknown = imgpipe_variables(pod_env(deployment_of(component))) - setting_variables(
        captured.settings_class
    )
    assert not unknown, f"{captured.settings_class.__name__} has no field for {sorted(unknown)}"


@pytest.mark.parametrize("component", COMPONENTS)
def test_probes_and_scrapes_hit_what_the_process_serves_on_its_port(component: str) -> None:
    skip_until_callback_exists(component)
    captured = capture(component)
    main = container(deployment_of(component)["spec"]["template"]["spec"])
    (port,) = main["ports"]
    paths = {main[probe]["httpGet"]["path"] for probe in ("startupProbe", "livenessProbe", "readinessProbe")}
    monitors = full().of_kind("PodMonitor", "ServiceMonitor")
    for monitor in monitors:
        if monitor["metadata"]["labels"]["app.kubernetes.io/component"] == component:
            endpoints = monitor["spec"].get("podMetricsEndpoints") or monitor["spec"]["endpoints"]
            assert {endpoint["port"] for endpoint in endpoints} == {port["name"]}
            paths |= {endpoint["path"] for endpoint in endpoints}
    if captured.http_app is not None:
        assert captured.http_port == port["containerPort"]
        served = {getattr(route, "path", None) for route in captured.http_app.routes}
        assert paths <= served, f"not routes of the app: {sorted(paths - served)}"
    else:
        assert captured.health_port == port["containerPort"]
        health = Health(liveness_stale_seconds=60)
        for path in paths:
            status = served_status(health, path)
            assert not status.startswith("404"), f"{path} is not served by the health server"


def served_status(health: Health, path: str) -> str:
    statuses: list[str] = []
    health.wsgi_app({"PATH_INFO": path, "REQUEST_METHOD": "GET"}, lambda status, _: statuses.append(status))
    return statuses[0]


@pytest.mark.parametrize("component", COMPONENTS)
def test_keda_watches_the_group_and_topics_the_code_consumes(component: str) -> None:
    skip_until_callback_exists(component)
    scaled = [
        doc
        for doc in full().of_kind("ScaledObject")
        if doc["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    if not scaled:
        pytest.skip(f"{component} is not scaled by KEDA in the full value set")
    captured = capture(component)
    if captured.faust_app is not None:
        group = captured.faust_app.conf.id
        topics = {name for agent in captured.faust_app.agents.values() for name in agent.channel.topics}
        offset_reset = captured.faust_app.conf.consumer_auto_offset_reset
    else:
        group, topics = captured.group, set(captured.topics)
        offset_reset = captured.consumer_config["auto.offset.reset"]
    triggers = [trigger["metadata"] for trigger in scaled[0]["spec"]["triggers"]]
    assert {trigger["consumerGroup"] for trigger in triggers} == {group}
    # The main input topics; retry tiers are subscribed by the consume loop but left out on purpose.
    assert {trigger["topic"] for trigger in triggers} == topics
    assert {trigger["offsetResetPolicy"] for trigger in triggers} == {offset_reset}
    bootstrap = pod_env(deployment_of(component))["IMGPIPE_KAFKA_BOOTSTRAP_SERVERS"]
    assert {trigger["bootstrapServers"] for trigger in triggers} == {bootstrap}


@pytest.mark.parametrize("component", COMPONENTS)
def test_directory_settings_point_into_scratch_volumes(component: str) -> None:
    """The root filesystem is read-only: a directory the process writes must be an emptyDir."""
    skip_until_callback_exists(component)
    pod = deployment_of(component)["spec"]["template"]["spec"]
    mounts = [PurePosixPath(mount["mountPath"]) for mount in container(pod)["volumeMounts"]]
    for name, value in pod_env(deployment_of(component)).items():
        if name.startswith(ENV_PREFIX) and name.endswith("_DIR"):
            assert any(PurePosixPath(value).is_relative_to(mount) for mount in mounts), (name, value)


# --- jobs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("job", JOBS)
def test_job_runs_a_real_subcommand_with_settings_it_reads(job: str) -> None:
    workload = job_of(job)
    args = container(workload["spec"]["template"]["spec"])["args"]
    env = pod_env(workload)
    captured = run_until_serving(args, env, stop_after_settings=True)
    assert captured.settings_class is not None, f"imgpipe {' '.join(args)} loaded no settings"
    unknown = imgpipe_variables(env) - setting_variables(captured.settings_class)
    assert not unknown, f"{captured.settings_class.__name__} has no field for {sorted(unknown)}"


# --- shared settings, versions -------------------------------------------------------------------


def test_shared_settings_are_read_by_every_process() -> None:
    """The settings ConfigMap goes to every component: its keys must be RuntimeSettings fields."""
    (config_map,) = [
        doc for doc in full().of_kind("ConfigMap") if doc["metadata"]["name"].endswith("-settings")
    ]
    assert set(config_map["data"]) <= setting_variables(RuntimeSettings)


def test_app_version_is_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"]


# --- dashboard -----------------------------------------------------------------------------------


def defined_metrics() -> set[str]:
    """Sample names of every metric the services define (their modules imported, then the registry)."""
    package = REPO / "services" / "imgpipe"
    for path in sorted(package.rglob("*.py")):
        if "prometheus_client import" in path.read_text():
            module = ".".join(("imgpipe", *path.relative_to(package).with_suffix("").parts))
            importlib.import_module(module)
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {
        family.name + suffix for family in REGISTRY.collect() for suffix in suffixes.get(family.type, ("",))
    }


def dashboard_metrics() -> set[str]:
    dashboard = (CHART / "dashboards" / "imgpipe.json").read_text()
    return set(re.findall(r"\bimgpipe_[a-z0-9_]+", dashboard))


def test_dashboard_is_generated_from_its_panel_list() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "imgpipe.deploytools.dashboard", "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_dashboard_queries_only_metrics_the_code_defines() -> None:
    defined = defined_metrics()
    unknown = dashboard_metrics() - defined
    if "callback" not in subcommands():
        # Panels for the callback app that is still being written.
        unknown = {name for name in unknown if not name.startswith("imgpipe_callback_")}
    assert not unknown, f"the dashboard queries metrics no service defines: {sorted(unknown)}"
    # A metric without a panel is worth a look, not a failure of someone else's change.
    families = {
        name.removesuffix("_bucket").removesuffix("_total") for name in defined if name.startswith("imgpipe_")
    }
    queried = {name.removesuffix("_bucket").removesuffix("_total") for name in dashboard_metrics()}
    missing = {name for name in families - queried if not name.endswith(("_sum", "_count"))}
    if missing:
        warnings.warn(f"metrics without a dashboard panel: {sorted(missing)}", stacklevel=1)


def test_registry_path_in_this_test_is_the_chart_symlink_target() -> None:
    assert (CHART / "files" / "topics").resolve() == Path(REPO / "schemas" / "topics").resolve()
