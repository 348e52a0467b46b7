"""skaffold.yaml against the JSON Schema skaffold publishes for its config version (from the pinned
skaffold module; building skaffold itself is not needed to check its config), and against the chart."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from chartkit import CHART, REPO
from jsonschema import Draft7Validator

from imgpipe.deploytools.toolchain import Toolchain

pytestmark = pytest.mark.chart

CONFIG = yaml.safe_load((REPO / "skaffold.yaml").read_text())


def schema(tools: Toolchain) -> dict[str, Any]:
    return dict(json.loads(tools.skaffold_schema(CONFIG["apiVersion"]).read_text()))


def pointer(document: Any, path: str) -> Any:
    for part in path.lstrip("/").split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        document = document[int(part)] if isinstance(document, list) else document[part]
    return document


def test_skaffold_yaml_matches_its_schema(tools: Toolchain) -> None:
    errors = [error.message for error in Draft7Validator(schema(tools)).iter_errors(CONFIG)]
    assert errors == []


def test_the_schema_check_bites(tools: Toolchain) -> None:
    broken = json.loads(json.dumps(CONFIG))
    broken["deploy"]["helm"]["releases"][0]["chart_path"] = "charts/imgpipe"
    assert list(Draft7Validator(schema(tools)).iter_errors(broken))


def test_profiles_by_name_and_their_patches_apply() -> None:
    profiles = {profile["name"]: profile for profile in CONFIG["profiles"]}
    assert set(profiles) == {"dev", "ci", "prod"}
    for name, profile in profiles.items():
        for patch in profile.get("patches", []):
            parent, _, key = patch["path"].rpartition("/")
            target = pointer(CONFIG, parent)
            if patch["op"] == "replace":
                assert key in target, (name, patch["path"])
            else:
                assert patch["op"] == "add" and isinstance(target, dict), (name, patch["path"])


def test_skaffold_deploys_the_chart_with_its_image_and_existing_value_files() -> None:
    (artifact,) = CONFIG["build"]["artifacts"]
    assert (REPO / artifact["docker"]["dockerfile"]).is_file()
    (release,) = CONFIG["deploy"]["helm"]["releases"]
    assert (REPO / release["chartPath"]).resolve() == CHART.resolve()
    image = artifact["image"]
    assert release["setValueTemplates"] == {
        "image.repository": f"{{{{.IMAGE_REPO_{image}}}}}",
        "image.tag": f"{{{{.IMAGE_TAG_{image}}}}}",
    }
    value_files = list(release["valuesFiles"])
    for profile in CONFIG["profiles"]:
        for patch in profile.get("patches", []):
            if patch["path"].endswith("/valuesFiles"):
                value_files += patch["value"]
            if patch["path"].endswith("/image.digest"):
                assert patch["value"] == f"{{{{.IMAGE_DIGEST_{image}}}}}"
    assert value_files and all((REPO / path).is_file() for path in value_files)
    assert yaml.safe_load((CHART / "values.yaml").read_text())["image"]["repository"] == image
