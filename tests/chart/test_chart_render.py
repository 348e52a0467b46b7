"""helm lint, helm template and strict Kubernetes schema validation of every value set, and the
chart's own invariants on what it renders."""

from __future__ import annotations

import copy
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from chartkit import (
    CHART,
    FULL,
    MINIMAL,
    REPO,
    VALUE_SETS,
    Manifests,
    container,
    helm,
    render,
    render_text,
    selects,
    value_set_id,
)

from imgpipe.contracts.registry import default_registry
from imgpipe.deploytools.toolchain import Toolchain

pytestmark = pytest.mark.chart

VERSIONS = ("1.31.14", "1.37.2")  # imgpipe.deploytools.versions.KUBERNETES; checked below


def test_validated_kubernetes_versions_are_the_pinned_ones(tools: Toolchain) -> None:
    assert tools.kubernetes_versions == VERSIONS
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == f">={VERSIONS[0].rsplit('.', 1)[0]}.0-0", (
        "the floor is the oldest validated"
    )


@pytest.mark.parametrize("values", VALUE_SETS, ids=value_set_id)
@pytest.mark.parametrize("kube_version", VERSIONS)
def test_helm_lint_strict(values: Path, kube_version: str) -> None:
    result = helm("lint", "--strict", "--kube-version", kube_version, "-f", str(values), str(CHART))
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("values", VALUE_SETS, ids=value_set_id)
@pytest.mark.parametrize("kube_version", VERSIONS)
def test_manifests_match_the_kubernetes_api_schemas(
    tools: Toolchain, values: Path, kube_version: str
) -> None:
    text = render_text([values], kube_version=kube_version)
    result = kubeconform(tools, kube_version, text)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Invalid: 0, Errors: 0, Skipped: 0" in result.stdout, result.stdout


def kubeconform(tools: Toolchain, kube_version: str, text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*tools.kubeconform_args(kube_version), "-"], input=text, capture_output=True, text=True
    )


@pytest.mark.parametrize("kind", ["Deployment", "ScaledObject", "PodMonitor", "NetworkPolicy"])
def test_the_schema_check_rejects_unknown_fields(tools: Toolchain, kind: str) -> None:
    """The converted schemas are strict (so a typo in a template cannot pass as valid)."""
    document = copy.deepcopy(render([FULL]).of_kind(kind)[0])
    document["spec"]["replicaz"] = 3
    result = kubeconform(tools, VERSIONS[-1], yaml.safe_dump(document))
    assert result.returncode != 0
    assert "additional properties 'replicaz' not allowed" in result.stdout


def test_the_schema_check_fails_on_kinds_it_has_no_schema_for(tools: Toolchain) -> None:
    result = kubeconform(
        tools, VERSIONS[-1], "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n"
    )
    assert result.returncode != 0 and "could not find schema" in result.stdout


def test_older_kubernetes_is_refused() -> None:
    result = helm(*["template", "x", str(CHART), "-f", str(MINIMAL), "--kube-version", "1.30.9"], check=False)
    assert result.returncode != 0 and "kubeVersion" in result.stderr


# --- what the chart promises about its output ----------------------------------------------------


def all_renders() -> list[tuple[str, Manifests]]:
    return [(value_set_id(path), render([path])) for path in VALUE_SETS]


def test_one_autoscaler_per_workload_and_no_replicas_under_one() -> None:
    for value_set, manifests in all_renders():
        hpa_targets = [
            doc["spec"]["scaleTargetRef"]["name"] for doc in manifests.of_kind("HorizontalPodAutoscaler")
        ]
        keda_targets = [doc["spec"]["scaleTargetRef"]["name"] for doc in manifests.of_kind("ScaledObject")]
        assert not set(hpa_targets) & set(keda_targets), value_set
        assert len(hpa_targets + keda_targets) == len(set(hpa_targets + keda_targets)), value_set
        for deployment in manifests.of_kind("Deployment"):
            autoscaled = deployment["metadata"]["name"] in hpa_targets + keda_targets
            assert ("replicas" in deployment["spec"]) is not autoscaled, (
                value_set,
                deployment["metadata"]["name"],
            )


def test_static_values_pin_replicas_and_render_no_autoscaler() -> None:
    manifests = render([CHART / "ci" / "static-values.yaml"])
    assert not manifests.of_kind("HorizontalPodAutoscaler", "ScaledObject", "TriggerAuthentication")
    replicas = {name: doc["spec"]["replicas"] for name, doc in manifests.components().items()}
    assert replicas == {
        "ingest-api": 3,
        "ingest-submit": 2,
        "ingest-projector": 1,
        "detect": 2,
        "generate": 2,
        "matte": 2,
    }


def test_pods_are_hardened_and_bounded() -> None:
    image_user = dockerfile_user()
    for value_set, manifests in all_renders():
        for workload, pod in manifests.workloads():
            where = (value_set, workload["metadata"]["name"])
            assert pod["automountServiceAccountToken"] is False, where
            assert pod["securityContext"]["runAsNonRoot"] is True, where
            assert pod["securityContext"]["runAsUser"] == image_user, where
            assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
            main = container(pod)
            assert main["securityContext"]["readOnlyRootFilesystem"] is True, where
            assert main["securityContext"]["allowPrivilegeEscalation"] is False, where
            assert main["securityContext"]["capabilities"] == {"drop": ["ALL"]}, where
            for bound in ("requests", "limits"):
                assert set(main["resources"][bound]) >= {"cpu", "memory"}, where
            # Read-only root: /tmp and HOME are scratch volumes.
            mounts = {mount["mountPath"]: mount["name"] for mount in main["volumeMounts"]}
            volumes = {volume["name"]: volume for volume in pod["volumes"]}
            for path in ("/tmp", "/var/lib/imgpipe"):
                assert "emptyDir" in volumes[mounts[path]], where


def dockerfile_user() -> int:
    users = [
        line.split()[1] for line in (REPO / "Dockerfile").read_text().splitlines() if line.startswith("USER ")
    ]
    assert len(users) == 1 and users[0].split(":")[0].isdigit(), "one numeric USER"
    return int(users[0].split(":")[0])


def test_every_component_has_probes_a_pdb_and_a_network_policy() -> None:
    for value_set, manifests in all_renders():
        policies = manifests.of_kind("NetworkPolicy")
        for name, deployment in manifests.components().items():
            main = container(deployment["spec"]["template"]["spec"])
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                assert main[probe]["httpGet"]["port"] == main["ports"][0]["name"], (value_set, name, probe)
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            pdbs = [
                pdb
                for pdb in manifests.of_kind("PodDisruptionBudget")
                if selects(pdb["spec"]["selector"]["matchLabels"], labels)
            ]
            assert len(pdbs) == 1, (value_set, name)
            if policies:
                covering = [
                    policy
                    for policy in policies
                    if selects(policy["spec"]["podSelector"]["matchLabels"], labels)
                ]
                assert len(covering) == 1, (value_set, name)
        if policies:
            for job in manifests.of_kind("Job"):
                labels = job["spec"]["template"]["metadata"]["labels"]
                assert any(
                    selects(policy["spec"]["podSelector"]["matchLabels"], labels) for policy in policies
                )


def test_the_api_has_a_service_and_the_ingress_and_monitors_point_at_it() -> None:
    manifests = render([FULL])
    (service,) = manifests.of_kind("Service")
    api = manifests.components()["ingest-api"]
    assert selects(service["spec"]["selector"], api["spec"]["template"]["metadata"]["labels"])
    assert (
        service["spec"]["ports"][0]["targetPort"]
        == container(api["spec"]["template"]["spec"])["ports"][0]["name"]
    )
    (ingress,) = manifests.of_kind("Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {
        "name": service["metadata"]["name"],
        "port": {"name": service["spec"]["ports"][0]["name"]},
    }
    # The API is scraped through its Service; every other component through a PodMonitor.
    (service_monitor,) = manifests.of_kind("ServiceMonitor")
    assert selects(service_monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    monitored = {
        doc["metadata"]["labels"]["app.kubernetes.io/component"] for doc in manifests.of_kind("PodMonitor")
    }
    assert monitored == set(manifests.components()) - {"ingest-api"}


def test_network_policies_let_scrapers_reach_every_component() -> None:
    manifests = render([FULL])
    values = yaml.safe_load(FULL.read_text())["networkPolicy"]
    for name, deployment in manifests.components().items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        (policy,) = [
            doc
            for doc in manifests.of_kind("NetworkPolicy")
            if selects(doc["spec"]["podSelector"]["matchLabels"], labels)
        ]
        (rule,) = policy["spec"]["ingress"]
        for peer in values["metricsFrom"]:
            assert peer in rule["from"], name
        if name == "ingest-api":
            assert all(peer in rule["from"] for peer in values["apiFrom"])
    # No apiFrom: the API's port is open to every client.
    minimal = render([MINIMAL])
    api_policy = minimal.named("NetworkPolicy", "imgpipe-ingest-api")
    assert "from" not in api_policy["spec"]["ingress"][0]


def test_settings_and_rollout_token_changes_roll_the_pods() -> None:
    def pod_annotations(*set_values: str) -> dict[str, dict[str, str]]:
        manifests = render([MINIMAL], set_values=list(set_values))
        return {
            name: doc["spec"]["template"]["metadata"]["annotations"]
            for name, doc in manifests.components().items()
        }

    before = pod_annotations()
    after_setting = pod_annotations("settings.LOG_LEVEL=DEBUG")
    after_token = pod_annotations("rolloutToken=rotated-db-password")
    for name in before:
        assert before[name]["checksum/settings"] != after_setting[name]["checksum/settings"], name
        assert after_token[name]["imgpipe.io/rollout-token"] == "rotated-db-password", name


def test_hooks_apply_topics_then_migrations_before_anything_starts() -> None:
    manifests = render([MINIMAL])
    jobs = {doc["metadata"]["name"].rsplit("-", 1)[-1]: doc for doc in manifests.of_kind("Job")}
    assert set(jobs) == {"topics", "migrate"}
    weights = {}
    for name, job in jobs.items():
        annotations = job["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
        weights[name] = int(annotations["helm.sh/hook-weight"])
        assert job["spec"]["template"]["spec"]["serviceAccountName"].endswith("-jobs")
    assert weights["topics"] < weights["migrate"]
    (hook_account,) = [
        sa for sa in manifests.of_kind("ServiceAccount") if sa["metadata"]["name"].endswith("-jobs")
    ]
    assert int(hook_account["metadata"]["annotations"]["helm.sh/hook-weight"]) < min(weights.values())


def test_keda_scales_at_most_to_the_partition_count_by_default() -> None:
    partitions = {spec.name: spec.partitions for spec in default_registry()}
    for scaled in render([MINIMAL]).of_kind("ScaledObject"):
        topics = [trigger["metadata"]["topic"] for trigger in scaled["spec"]["triggers"]]
        assert scaled["spec"]["maxReplicaCount"] == max(partitions[topic] for topic in topics)


def test_stages_scale_in_the_pod_and_their_cpu_follows_the_workers() -> None:
    def stage(manifests: Manifests, name: str) -> tuple[dict[str, str], dict[str, Any]]:
        main = container(manifests.components()[name]["spec"]["template"]["spec"])
        env = {item["name"]: item.get("value") for item in main["env"]}
        return env, main["resources"]

    for name in ("detect", "generate", "matte"):
        env, resources = stage(render([MINIMAL]), name)
        assert (env["IMGPIPE_STAGE_WORKERS"], env["IMGPIPE_STAGE_MAX_IN_FLIGHT"]) == ("2", "8"), name
        assert resources["requests"]["cpu"] == resources["limits"]["cpu"] == "2000m", name
        assert resources["requests"]["memory"] == "512Mi", "the rest of resources stays as given"
    more = render(
        [MINIMAL],
        set_values=[f"components.detect.concurrency.{key}" for key in ("workers=3", "cpuPerWorker=750m")],
    )
    env, resources = stage(more, "detect")
    assert env["IMGPIPE_STAGE_WORKERS"] == "3"
    assert resources["requests"]["cpu"] == resources["limits"]["cpu"] == "2250m"


def test_the_registry_is_read_through_a_symlink_and_packaged(tmp_path: Path) -> None:
    link = CHART / "files" / "topics"
    assert link.is_symlink() and link.resolve() == (REPO / "schemas" / "topics").resolve()
    helm("package", str(CHART), "--destination", str(tmp_path))
    (package,) = tmp_path.glob("imgpipe-*.tgz")
    with tarfile.open(package) as archive:
        packaged = {Path(name).name for name in archive.getnames() if "/files/topics/" in name}
        assert not any("/ci/" in name or "/profiles/" in name for name in archive.getnames())
    assert packaged == {path.name for path in (REPO / "schemas" / "topics").glob("*.yaml")}


def test_notes_render(tmp_path: Path) -> None:
    """`helm template` does not render NOTES.txt and `helm install --dry-run` wants a cluster: render it
    through `tpl` in a copy of the chart."""
    chart = tmp_path / "imgpipe"
    shutil.copytree(CHART, chart)  # follows the registry symlink
    (chart / "notes.txt").write_text((CHART / "templates" / "NOTES.txt").read_text())
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\ndata:\n"
        '  notes: {{ tpl (.Files.Get "notes.txt") . | quote }}\n'
    )

    def notes(values: Path, *extra: str) -> str:
        args = ["template", "imgpipe", str(chart), "-n", "imgpipe", "-f", str(values), *extra]
        output = helm(*args, "--show-only", "templates/zz-notes.yaml").stdout
        return str(yaml.safe_load(output)["data"]["notes"])

    full = notes(FULL)
    assert "imgpipe ingest-api" in full and "KEDA: 0-4 replicas" in full
    assert "https://imgpipe.example.com/docs" in full
    minimal = notes(MINIMAL, "--set", "components.callback.enabled=false")
    assert "callback is disabled" in minimal and "port-forward svc/imgpipe-ingest-api" in minimal
