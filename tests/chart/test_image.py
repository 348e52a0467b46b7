"""The Dockerfile's promises, read from the file (`make image` builds it; these run without): one pinned base,
dependencies from the lock, the project as a wheel, a numeric non-root user the chart runs as, and
`imgpipe` as the entrypoint."""

from __future__ import annotations

import re

import pytest
import yaml
from chartkit import CHART, REPO

pytestmark = pytest.mark.chart

DOCKERFILE = (REPO / "Dockerfile").read_text()
INSTRUCTIONS = [
    line for line in re.sub(r"\\\n", " ", DOCKERFILE).splitlines() if line and not line.startswith("#")
]


def instructions(keyword: str) -> list[str]:
    return [line.split(None, 1)[1] for line in INSTRUCTIONS if line.split(None, 1)[0] == keyword]


def test_every_stage_uses_one_base_pinned_to_an_exact_version() -> None:
    # One build argument names the base of both stages; its default, what a real build uses, is the
    # pinned public image (`make image` passes a local one where no registry is reachable).
    bases = {line.split()[0] for line in instructions("FROM")}
    assert len(instructions("FROM")) == 2 and bases == {"${BASE_IMAGE}"}
    first_from = next(i for i, line in enumerate(INSTRUCTIONS) if line.startswith("FROM "))
    (default,) = [
        line.split("=", 1)[1] for line in INSTRUCTIONS[:first_from] if line.startswith("ARG BASE_IMAGE=")
    ]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", default), default


def test_dependencies_come_from_the_lock_and_the_project_is_a_wheel() -> None:
    syncs = [line for line in instructions("RUN") if "uv sync" in line]
    # No dependency group (dev tools, the benchmarks' Celery baseline) goes into the image.
    assert syncs and all("--frozen" in line and "--no-default-groups" in line for line in syncs)
    assert "--no-editable" in syncs[-1]
    makefile_uv = re.search(r"^UV_VERSION := (\S+)$", (REPO / "Makefile").read_text(), re.M)
    assert makefile_uv and f"ARG UV_VERSION={makefile_uv.group(1)}" in DOCKERFILE, "the Makefile's uv"


def test_the_image_runs_as_the_chart_user_with_imgpipe_as_entrypoint() -> None:
    (user,) = instructions("USER")
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    pod = values["podSecurityContext"]
    assert user == f"{pod['runAsUser']}:{pod['runAsGroup']}"
    assert instructions("ENTRYPOINT") == ['["imgpipe"]']
    assert "HOME=/var/lib/imgpipe" in DOCKERFILE and instructions("WORKDIR")[-1] == "/var/lib/imgpipe"
    scratch = {entry["mountPath"] for entry in values["componentDefaults"]["emptyDirs"]}
    assert {"/tmp", "/var/lib/imgpipe"} <= scratch


def test_the_build_context_holds_what_the_dockerfile_copies() -> None:
    allowed = {
        line[1:].rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    copied = {
        source for line in instructions("COPY") if "--from=" not in line for source in line.split()[:-1]
    }
    assert copied == allowed
    assert all((REPO / path).exists() for path in copied)
