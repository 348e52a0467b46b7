"""schemathesis against the running API, from the committed OpenAPI document: every check, 0 failures.

Property-based requests (valid and invalid, from the document's own schemas; coverage, fuzzing and
stateful phases) against the real service on the real stack. Tenant routes run with a fresh tenant's
key, admin routes with the admin token. The example count is bounded so `make test` stays short
(docs/api.md records what a run covers); schemathesis.toml beside this file says the two things the
document cannot.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from imgpipe.client import ApiClient, TaskRequest
from imgpipe.localstack.pipeline import LocalPipeline
from imgpipe.samples import photo_jpeg

pytestmark = pytest.mark.integration

OPENAPI_DOCUMENT = Path(__file__).parents[2] / "schemas" / "openapi.json"
CONFIG = Path(__file__).with_name("schemathesis.toml")
MAX_EXAMPLES = 25
SEED = 20261203  # reproducible: a failure here replays with the same inputs


def run_schemathesis(
    pipeline: LocalPipeline, tag: str, token: str, task_id: str, report: Path
) -> dict[str, Any]:
    schemathesis = Path(sys.executable).with_name("schemathesis")
    command = [str(schemathesis), "--config-file", str(CONFIG), "run", str(OPENAPI_DOCUMENT)]
    command += ["--url", pipeline.api_url]
    command += ["--header", f"Authorization: Bearer {token}", "--include-tag", tag]
    command += ["--checks", "all", "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED)]
    command += ["--generation-database", "none", "--request-timeout", "30", "--workers", "1", "--no-color"]
    command += ["--report", "json", "--report-json-path", str(report)]
    env = {**os.environ, "IMGPIPE_SCHEMATHESIS_TASK_ID": task_id}
    finished = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    assert finished.returncode == 0, finished.stdout[-6000:] + finished.stderr[-2000:]
    summary: dict[str, Any] = json.loads(report.read_text())
    return summary


@pytest.mark.parametrize("tag", ["tasks", "webhooks", "admin"])
def test_schemathesis_finds_no_server_error_and_no_failed_check(
    pipeline: LocalPipeline, tenant: Any, tag: str, tmp_path: Path
) -> None:
    token = pipeline.state.admin_token if tag == "admin" else tenant.api_key
    api = ApiClient(pipeline.api_url, tenant.api_key)
    try:
        task_id = api.submit(TaskRequest("watercolor", image=photo_jpeg()))["id"]
    finally:
        api.close()
    summary = run_schemathesis(pipeline, tag, token, task_id, tmp_path / "report.json")
    cases = summary["test_cases"]
    print(f"schemathesis {tag}: {cases['generated']} test cases, phases {summary['phases']}")
    assert (summary["failures"], summary["errors"], cases["with_failures"]) == ([], [], 0)
    assert cases["generated"] >= 20  # it really ran: each operation got examples
    for operation, rates in summary["valid_rates"].items():
        # Some generated requests got past validation into the handlers, where the bugs are (a 409 is a
        # handler's answer too: cancelling an ended task).
        reached = sum(phase["accepted"] + phase["conflicts"] for phase in rates.values())
        assert reached > 0, (operation, rates)
