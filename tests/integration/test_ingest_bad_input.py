"""Issue 10's bad inputs against the real stack: each gets its status and problem body, the task state
that follows is the one asserted, and the API keeps answering."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from imgpipe.contracts.registry import TopicKey, default_registry
from imgpipe.ingest.api import ApiDependencies, create_app
from imgpipe.ingest.settings import IngestSettings
from imgpipe.ingest.submit import SubmitConsumer
from imgpipe.ingest.tenants import ApiKeyAuthenticator
from imgpipe.ingest.wiring import IngestCore
from imgpipe.ratelimit import KeyedLimiter
from imgpipe.runtime.errors import PoisonMessage
from imgpipe.runtime.kafka import Record
from imgpipe.store.models import Task

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("registry_topics")]
REGISTRY = default_registry()
PROBLEM = "application/problem+json"
PNG_1PX = (  # a 1x1 PNG
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGP4z8DwHwAFAAIB4rGjoQAAAABJRU5ErkJggg=="
)


@pytest.fixture
def core(ingest_settings: IngestSettings, sessions: sessionmaker[Session]) -> IngestCore:
    return IngestCore.from_settings(ingest_settings)


def api_client(core: IngestCore) -> TestClient:
    deps = ApiDependencies(
        settings=core.settings,
        sessions=core.sessions,
        objects=core.objects,
        acceptor=core.acceptor,
        authenticator=ApiKeyAuthenticator(core.sessions, cache_seconds=0),
        limiter=KeyedLimiter(),
        result_topic=core.result_topic,
    )
    return TestClient(create_app(deps))


@pytest.fixture
def client(core: IngestCore) -> Iterator[TestClient]:
    with api_client(core) as test_client:
        yield test_client


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released): a dependency that is down."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def tasks_of(sessions: sessionmaker[Session], tenant: Any) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(Task).where(Task.tenant_id == tenant.id)) or 0


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    return body


def test_an_empty_idempotency_key_is_refused_not_merged(
    client: TestClient, tenant: Any, sessions: sessionmaker[Session]
) -> None:
    headers = {**tenant.headers, "Idempotency-Key": ""}
    for prompt in ("one", "two"):
        response = client.post("/v1/tasks", json={"prompt": prompt, "image_base64": PNG_1PX}, headers=headers)
        assert_problem(response, 422, "invalid_request")
    assert tasks_of(sessions, tenant) == 0


def test_the_same_key_with_another_body_is_a_conflict_naming_the_original(
    client: TestClient, tenant: Any, sessions: sessionmaker[Session]
) -> None:
    headers = {**tenant.headers, "Idempotency-Key": "order-9"}
    first = client.post("/v1/tasks", json={"prompt": "ink", "image_base64": PNG_1PX}, headers=headers)
    again = client.post("/v1/tasks", json={"prompt": "ink", "image_base64": PNG_1PX}, headers=headers)
    other = client.post("/v1/tasks", json={"prompt": "oil", "image_base64": PNG_1PX}, headers=headers)

    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["id"] == first.json()["id"]
    assert assert_problem(other, 409, "idempotency_conflict")["task_id"] == first.json()["id"]
    assert tasks_of(sessions, tenant) == 1
    found = client.get("/v1/tasks", params={"idempotency_key": "order-9"}, headers=tenant.headers)
    assert [task["id"] for task in found.json()["tasks"]] == [first.json()["id"]]


def test_a_batch_with_a_repeated_item_key_names_the_items(
    client: TestClient, tenant: Any, sessions: sessionmaker[Session]
) -> None:
    item = {"prompt": "p", "image_base64": PNG_1PX, "idempotency_key": "same"}
    response = client.post("/v1/tasks:batch", json={"tasks": [item, item]}, headers=tenant.headers)
    body = assert_problem(response, 422, "duplicate_idempotency_key")
    assert {error["location"] for error in body["errors"]} >= {"body.tasks.1.idempotency_key"}
    assert tasks_of(sessions, tenant) == 0


@pytest.mark.parametrize(
    "overrides",
    [
        {"prompt": "nul \u0000 inside"},
        {"prompt": "lone \ud800 surrogate"},
        {"metadata": {"key\u0000": "v"}},
        {"metadata": {"k": "value \udfff"}},
    ],
    ids=["nul-prompt", "surrogate-prompt", "nul-metadata-key", "surrogate-metadata-value"],
)
def test_text_the_database_cannot_hold_is_a_422(
    client: TestClient, tenant: Any, sessions: sessionmaker[Session], overrides: dict[str, Any]
) -> None:
    body = json.dumps({"prompt": "p", "image_base64": PNG_1PX, **overrides})  # \u escapes keep surrogates
    headers = {**tenant.headers, "Content-Type": "application/json"}
    assert_problem(client.post("/v1/tasks", content=body, headers=headers), 422, "invalid_request")
    assert tasks_of(sessions, tenant) == 0
    healthy = client.post(
        "/v1/tasks", json={"prompt": "fine", "image_base64": PNG_1PX}, headers=tenant.headers
    )
    assert healthy.status_code == 202


def test_bodies_over_the_cap_wrong_types_and_bad_json_get_one_problem_shape(
    client: TestClient, tenant: Any, core: IngestCore
) -> None:
    cap = core.settings.max_request_bytes
    declared = client.post(
        "/v1/tasks",
        content=b"{" + b" " * cap + b"}",
        headers={**tenant.headers, "Content-Type": "application/json"},
    )
    assert_problem(declared, 413, "request_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused while streaming
        yield b'{"prompt": "'
        for _ in range(cap // 65536 + 2):
            yield b"a" * 65536

    streamed = client.post(
        "/v1/tasks", content=chunks(), headers={**tenant.headers, "Content-Type": "application/json"}
    )
    assert_problem(streamed, 413, "request_too_large")

    wrong_type = client.post(
        "/v1/tasks", content=b"prompt=p", headers={**tenant.headers, "Content-Type": "text/plain"}
    )
    assert_problem(wrong_type, 415, "unsupported_media_type")
    for broken in (b'{"prompt": ', b"\xff\xfe"):
        response = client.post(
            "/v1/tasks", content=broken, headers={**tenant.headers, "Content-Type": "application/json"}
        )
        assert_problem(response, 422, "invalid_request")


def record(value: bytes, key: bytes | None = None, offset: int = 0) -> Record:
    return Record(
        topic="submit", partition=0, offset=offset, key=key, value=value, headers={}, timestamp_ms=0
    )


def test_the_kafka_message_key_is_not_an_idempotency_key(
    client: TestClient, tenant: Any, core: IngestCore, sessions: sessionmaker[Session]
) -> None:
    consumer = SubmitConsumer(core.acceptor, REGISTRY.topic(TopicKey.SUBMIT))
    for n in range(10):
        value = {"prompt": f"style {n}", "image_base64": PNG_1PX, "tenant_id": tenant.id}
        consumer.handle(record(json.dumps(value).encode(), key=b"customer-42", offset=n))
    assert tasks_of(sessions, tenant) == 10
    # ...and a keyless message redelivered (a crash before its offset was committed) is still one task.
    consumer.handle(record(json.dumps(value).encode(), key=b"customer-42", offset=9))
    assert tasks_of(sessions, tenant) == 10


def test_unstorable_text_on_the_topic_is_permanent_and_visible_as_a_failed_task(
    client: TestClient, tenant: Any, core: IngestCore
) -> None:
    consumer = SubmitConsumer(core.acceptor, REGISTRY.topic(TopicKey.SUBMIT))
    value = json.dumps({"prompt": "nul \u0000", "image_base64": PNG_1PX, "tenant_id": tenant.id})
    with pytest.raises(PoisonMessage):
        consumer.handle(record(value.encode()))
    failed = client.get("/v1/tasks", params={"state": "failed"}, headers=tenant.headers).json()["tasks"]
    assert [task["error"]["code"] for task in failed] == ["invalid_request"]


def test_every_submit_example_is_accepted_by_the_consumer(
    tenant: Any, core: IngestCore, sessions: sessionmaker[Session]
) -> None:
    consumer = SubmitConsumer(core.acceptor, REGISTRY.topic(TopicKey.SUBMIT))
    examples = REGISTRY.topic(TopicKey.SUBMIT).examples
    for offset, path in enumerate(examples):
        document = json.loads(path.read_text())
        document["tenant_id"] = tenant.id  # the examples name a tenant this test stack does not have
        consumer.handle(record(json.dumps(document).encode(), offset=offset))
    assert tasks_of(sessions, tenant) == len(examples) > 0


def test_a_store_that_is_down_is_a_503_with_retry_after_and_no_task(
    ingest_settings: IngestSettings, sessions: sessionmaker[Session], tenant: Any
) -> None:
    body = {"prompt": "noir", "image_base64": PNG_1PX}
    s3_down = ingest_settings.model_copy(update={"s3_endpoint_url": f"http://127.0.0.1:{closed_port()}"})
    with api_client(IngestCore.from_settings(s3_down)) as client:
        response = client.post("/v1/tasks", json=body, headers=tenant.headers)
        problem = assert_problem(response, 503, "unavailable")
        assert response.headers["retry-after"] == "5" and "put" in problem["detail"]
        assert tasks_of(sessions, tenant) == 0  # the image is stored before the task exists
        assert client.get("/v1/tasks", headers=tenant.headers).status_code == 200  # the rest still works

    database_down = make_url(ingest_settings.database_url).set(host="127.0.0.1", port=closed_port())
    postgres_down = ingest_settings.model_copy(
        update={"database_url": database_down.render_as_string(hide_password=False)}
    )
    with api_client(IngestCore.from_settings(postgres_down)) as client:
        response = client.post("/v1/tasks", json=body, headers=tenant.headers)
        assert_problem(response, 503, "unavailable")
        assert response.headers["retry-after"]
