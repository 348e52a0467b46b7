"""Rendering charts/imgpipe with the pinned helm, and reading what it renders."""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from imgpipe.deploytools.toolchain import Toolchain, default_toolchain

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "imgpipe"
# Value sets rendered by every check: the chart tests' own, then what skaffold's profiles deploy.
VALUE_SETS = sorted((CHART / "ci").glob("*-values.yaml")) + sorted((CHART / "profiles").glob("*-values.yaml"))
FULL = CHART / "ci" / "full-values.yaml"
MINIMAL = CHART / "ci" / "minimal-values.yaml"
RELEASE = "imgpipe"
NAMESPACE = "imgpipe"

WORKLOAD_KINDS = ("Deployment", "Job")


def value_set_id(path: Path) -> str:
    return f"{path.parent.name}/{path.stem.removesuffix('-values')}"


def toolchain() -> Toolchain:
    return default_toolchain()


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    tools = toolchain()
    home = tools.root / "helm-home"
    # Helm writes its config, cache and data under HOME by default; keep it in the cache dir.
    env = {
        **os.environ,
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    result = subprocess.run([str(tools.helm), *args], capture_output=True, text=True, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stderr}")
    return result


def template_args(
    values: Sequence[Path] = (),
    set_values: Sequence[str] = (),
    set_json: Sequence[str] = (),
    kube_version: str | None = None,
) -> list[str]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    args += ["--kube-version", kube_version or toolchain().kubernetes_versions[-1]]
    for path in values:
        args += ["-f", str(path)]
    for item in set_values:
        args += ["--set", item]
    for item in set_json:
        args += ["--set-json", item]
    return args


def render_text(values: Sequence[Path] = (), **kwargs: Any) -> str:
    return helm(*template_args(values, **kwargs)).stdout


@functools.cache
def _render_cached(values: tuple[Path, ...], kube_version: str | None) -> str:
    return render_text(values, kube_version=kube_version)


def render(values: Sequence[Path] = (), kube_version: str | None = None, **kwargs: Any) -> Manifests:
    """The rendered documents (cached per value set when no --set is given)."""
    if kwargs:
        return Manifests.parse(render_text(values, kube_version=kube_version, **kwargs))
    return Manifests.parse(_render_cached(tuple(values), kube_version))


@dataclass(frozen=True)
class Manifests:
    documents: tuple[dict[str, Any], ...]

    @classmethod
    def parse(cls, text: str) -> Manifests:
        return cls(tuple(doc for doc in yaml.safe_load_all(text) if doc))

    def of_kind(self, *kinds: str) -> list[dict[str, Any]]:
        return [doc for doc in self.documents if doc["kind"] in kinds]

    def named(self, kind: str, name: str) -> dict[str, Any]:
        for doc in self.of_kind(kind):
            if doc["metadata"]["name"] == name:
                return doc
        raise KeyError(f"no {kind} {name}")

    def workloads(self) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """(workload, pod spec) of every Deployment and Job."""
        for doc in self.of_kind(*WORKLOAD_KINDS):
            yield doc, doc["spec"]["template"]["spec"]

    def components(self) -> dict[str, dict[str, Any]]:
        """Deployments by their app.kubernetes.io/component label."""
        return {
            doc["metadata"]["labels"]["app.kubernetes.io/component"]: doc
            for doc in self.of_kind("Deployment")
        }


def container(pod_spec: dict[str, Any]) -> dict[str, Any]:
    (only,) = pod_spec["containers"]
    return dict(only)


def resolved_env(manifests: Manifests, pod_spec: dict[str, Any], secret_value: Any) -> dict[str, str]:
    """The environment the container gets: its ConfigMaps (envFrom), then env; Secret references are
    replaced by `secret_value(variable)`."""
    env: dict[str, str] = {}
    main = container(pod_spec)
    for source in main.get("envFrom", []):
        env |= manifests.named("ConfigMap", source["configMapRef"]["name"])["data"]
    for item in main.get("env", []):
        env[item["name"]] = secret_value(item["name"]) if "valueFrom" in item else item["value"]
    return env


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def names(items: Iterable[dict[str, Any]]) -> set[str]:
    return {item["metadata"]["name"] for item in items}
