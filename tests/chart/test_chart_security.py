"""checkov (pinned, offline) over every rendered value set and the Dockerfile: no failed check except
the few skipped below, each with its reason. checkov offline reports no severities (those come from
its vendor's service), so nothing is waved through as "low": every finding fails the test."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from chartkit import CHART, REPO, VALUE_SETS, render_text, value_set_id

from imgpipe.deploytools.toolchain import Toolchain

pytestmark = pytest.mark.chart

# Everywhere: the services read their settings, secrets included, from IMGPIPE_* variables
# (pydantic-settings); mounting Secrets as files needs the code to read a secrets directory first.
ALWAYS_SKIPPED = {"CKV_K8S_35"}
# Value sets that leave the image unpinned (tag only) on purpose: the digest is a deploy-time value
# (skaffold's prod profile and CI set image.digest; ci/full renders it). With a digest, IfNotPresent
# is as safe as Always, so the pull-policy check goes with it.
UNPINNED_IMAGE = {"CKV_K8S_43", "CKV_K8S_15"}
SKIPPED = {
    "ci/full": ALWAYS_SKIPPED,
    "ci/minimal": ALWAYS_SKIPPED | UNPINNED_IMAGE,
    # This set turns NetworkPolicies off to show the chart without them.
    "ci/static": ALWAYS_SKIPPED | UNPINNED_IMAGE | {"CKV2_K8S_6"},
    "profiles/dev": ALWAYS_SKIPPED | UNPINNED_IMAGE | {"CKV2_K8S_6"},
    # The prod profile's digest comes from skaffold's build, not from the values file.
    "profiles/prod": ALWAYS_SKIPPED | UNPINNED_IMAGE,
}


BITES = "privileged.yaml"  # a render made insecure on purpose: the scan must fail it


@pytest.fixture(scope="module")
def findings(tools: Toolchain, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, list[str]]]:
    """One checkov run (its start-up is most of its time) over every rendered value set, the
    insecure render and the Dockerfile, with nothing skipped: {file: {"passed": [...], "failed": [...]}}."""
    directory = tmp_path_factory.mktemp("checkov")
    for values in VALUE_SETS:
        (directory / f"{value_set_id(values).replace('/', '-')}.yaml").write_text(render_text([values]))
    insecure = render_text(
        [CHART / "ci" / "full-values.yaml"], set_values=["securityContext.privileged=true"]
    )
    (directory / BITES).write_text(
        insecure.replace("readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false")
    )
    (directory / "Dockerfile").write_text(default_build(REPO / "Dockerfile"))
    argv = [str(tools.checkov), "--directory", str(directory), "--framework", "kubernetes", "dockerfile"]
    argv += ["--output", "json", "--compact", "--skip-download"]  # offline: no vendor API calls
    result = subprocess.run(argv, capture_output=True, text=True)
    assert result.returncode in (0, 1), result.stderr[-2000:]  # 1: there are findings
    reports = json.loads(result.stdout)
    by_file: dict[str, dict[str, list[str]]] = {}
    for report in reports if isinstance(reports, list) else [reports]:
        for outcome in ("passed", "failed"):
            for check in report.get("results", {}).get(f"{outcome}_checks", []):
                entry = by_file.setdefault(Path(check["file_path"]).name, {"passed": [], "failed": []})
                entry[outcome].append(f"{check['check_id']} {check['check_name']}: {check['resource']}")
    return by_file


def default_build(dockerfile: Path) -> str:
    """The Dockerfile as a build without build arguments sees it: the global ARGs' defaults (the
    pinned base) put into the FROM lines, which checkov does not resolve (`FROM ${BASE_IMAGE}` would
    fail CKV_DOCKER_7, untagged base, whatever the default is)."""
    text = dockerfile.read_text()
    first_from = re.search(r"^FROM ", text, re.M)
    assert first_from, "the Dockerfile has no FROM"
    head = text[: first_from.start()]
    defaults = dict(re.findall(r"^ARG (\w+)=(\S+)$", head, re.M))
    assert defaults, "no global ARG with a default before the first FROM"

    def resolve(line: re.Match[str]) -> str:
        return re.sub(r"\$\{(\w+)\}", lambda name: defaults[name[1]], line[0])

    return re.sub(r"^FROM .*$", resolve, text, flags=re.M)


def unexpected(found: dict[str, list[str]], skipped: set[str]) -> list[str]:
    return [finding for finding in found["failed"] if finding.split()[0] not in skipped]


def test_every_value_set_has_its_skip_list() -> None:
    assert set(SKIPPED) == {value_set_id(path) for path in VALUE_SETS}


@pytest.mark.parametrize("values", VALUE_SETS, ids=value_set_id)
def test_rendered_manifests_pass_checkov(findings: dict[str, dict[str, list[str]]], values: Path) -> None:
    found = findings[f"{value_set_id(values).replace('/', '-')}.yaml"]
    assert len(found["passed"]) > 100, "checkov found nothing to check"
    assert unexpected(found, SKIPPED[value_set_id(values)]) == []


def test_dockerfile_passes_checkov(findings: dict[str, dict[str, list[str]]]) -> None:
    assert len(findings["Dockerfile"]["passed"]) > 10
    assert findings["Dockerfile"]["failed"] == []


def test_checkov_fails_what_the_chart_prevents(findings: dict[str, dict[str, list[str]]]) -> None:
    """The scan bites: a privileged container with a writable root fails it."""
    found = {finding.split()[0] for finding in unexpected(findings[BITES], ALWAYS_SKIPPED)}
    assert {"CKV_K8S_16", "CKV_K8S_22"} <= found
