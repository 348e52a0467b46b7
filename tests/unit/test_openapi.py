"""The committed OpenAPI document (schemas/openapi.json) against what the routes declare."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from imgpipe.ingest.openapi import committed_path, document, stale_diff
from imgpipe.ingest.problems import PROBLEM_CONTENT_TYPE

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return document()


def test_the_committed_document_is_current() -> None:
    diff = stale_diff()
    assert not diff, f"{committed_path()} is stale; run `make openapi`:\n{diff[:3000]}"


def test_every_operation_has_an_id_security_and_problem_bodies(doc: dict[str, Any]) -> None:
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schemes["bearer"]["description"],
    }
    assert schemes["apiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    operation_ids = []
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            operation_ids.append(operation["operationId"])
            assert operation["security"], f"{method} {path} declares no security"
            errors = {status: r for status, r in operation["responses"].items() if status >= "400"}
            assert {"401", "422"} <= errors.keys(), f"{method} {path}"
            for status, response in errors.items():
                assert list(response["content"]) == [PROBLEM_CONTENT_TYPE], f"{method} {path} {status}"
    assert len(set(operation_ids)) == len(operation_ids)
    submit = doc["paths"]["/v1/tasks"]["post"]
    assert {"200", "202", "400", "401", "409", "413", "415", "422", "429", "503"} <= submit[
        "responses"
    ].keys()
    assert "Retry-After" in submit["responses"]["429"]["headers"]


def test_the_image_is_one_of_a_url_or_inline_bytes_and_states_are_enums(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    body = doc["paths"]["/v1/tasks"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert [alternative["$ref"].rsplit("/", 1)[-1] for alternative in body["oneOf"]] == [
        "SubmitTaskByUrl",
        "SubmitTaskInline",
    ]
    assert "image_base64" not in schemas["SubmitTaskByUrl"]["properties"]
    assert "image_url" not in schemas["SubmitTaskInline"]["properties"]
    assert schemas["TaskState"]["enum"] == ["queued", "processing", "succeeded", "failed", "canceled"]
    assert "no_pet_detected" in schemas["TaskErrorView"]["properties"]["code"]["enum"]
    assert "idempotency_conflict" in schemas["ProblemCode"]["enum"]


def test_an_unsupported_method_is_405_naming_every_allowed_method() -> None:
    from typing import cast

    from imgpipe.ingest.api import ApiDependencies, create_app

    client = TestClient(create_app(cast("ApiDependencies", None)))
    response = client.delete("/v1/tasks")
    assert response.status_code == 405
    assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE
    assert response.json()["code"] == "method_not_allowed"
    assert response.headers["allow"] == "GET, POST"
