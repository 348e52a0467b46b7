"""A client generated from the committed OpenAPI document drives the real API: the contract clients get.

The generator is openapi-python-client at the version pinned in pyproject.toml; the generated code lives
in the test's tmp dir only (never committed, so never stale). `--fail-on-warning` makes any part of the
document it cannot turn into typed code a failure here.
"""

from __future__ import annotations

import base64
import importlib
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from imgpipe.localstack.pipeline import LocalPipeline
from imgpipe.samples import photo_jpeg

pytestmark = pytest.mark.integration

OPENAPI_DOCUMENT = Path(__file__).parents[2] / "schemas" / "openapi.json"
PACKAGE = "imgpipe_generated_client"
# No formatter hooks: the generated code only has to import, not to be pretty.
GENERATOR_CONFIG = "post_hooks: []\n"


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    root = tmp_path_factory.mktemp("client")
    config = root / "config.yaml"
    config.write_text(GENERATOR_CONFIG)
    generator = Path(sys.executable).with_name("openapi-python-client")
    command = [str(generator), "generate", "--path", str(OPENAPI_DOCUMENT), "--meta", "none"]
    command += ["--fail-on-warning", "--config", str(config), "--output-path", str(root / PACKAGE)]
    subprocess.run(
        command,
        check=True,
        capture_output=True,
        timeout=120,
    )
    sys.path.insert(0, str(root))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(root))
        for name in [name for name in sys.modules if name.split(".")[0] == PACKAGE]:
            del sys.modules[name]


def _module(package: ModuleType, name: str) -> Any:
    return importlib.import_module(f"{package.__name__}.{name}")


def test_a_generated_client_submits_waits_for_and_reads_a_task(
    generated: ModuleType, pipeline: LocalPipeline
) -> None:
    submit_task = _module(generated, "api.tasks.submit_task")
    get_task = _module(generated, "api.tasks.get_task")
    list_tasks = _module(generated, "api.tasks.list_tasks")
    models = _module(generated, "models")
    client = generated.AuthenticatedClient(base_url=pipeline.api_url, token=pipeline.api_key, timeout=60.0)
    key = f"generated-{uuid.uuid4().hex}"
    body = models.SubmitTaskInline(
        prompt="watercolor", image_base64=base64.b64encode(photo_jpeg()).decode("ascii")
    )

    with client:
        accepted = submit_task.sync_detailed(client=client, body=body, idempotency_key=key)
        replayed = submit_task.sync_detailed(client=client, body=body, idempotency_key=key)
        statuses = (accepted.status_code, replayed.status_code)
        assert statuses == (202, 200), (accepted.content, replayed.content)
        assert isinstance(accepted.parsed, models.TaskView)
        task_id = accepted.parsed.id
        assert replayed.parsed.id == task_id

        task = accepted.parsed
        for _ in range(12):  # each call holds up to 10 s server-side: a 2-minute deadline
            task = get_task.sync(task_id, client=client, prefer="wait=10")
            assert isinstance(task, models.TaskView), task
            if task.state in (models.TaskState.SUCCEEDED, models.TaskState.FAILED):
                break
        assert task.state == models.TaskState.SUCCEEDED, task.error
        assert task.result_url and task.completed_at is not None

        page = list_tasks.sync(client=client, idempotency_key=key)
        assert isinstance(page, models.TaskPage)
        assert [listed.id for listed in page.tasks] == [task_id]

        missing = get_task.sync(uuid.uuid4(), client=client)
        assert isinstance(missing, models.ProblemDetails)
        assert missing.code == models.ProblemCode.NOT_FOUND
