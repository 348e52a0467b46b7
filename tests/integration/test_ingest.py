"""ingest against the real stack: the HTTP API, outbox relay, cancel, reaper, projector, submit topic."""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from imgpipe.contracts.registry import TopicKey, default_registry
from imgpipe.ingest.api import ApiDependencies, create_app
from imgpipe.ingest.outbox import OutboxRelay
from imgpipe.ingest.projector import Projector
from imgpipe.ingest.settings import IngestSettings
from imgpipe.ingest.submit import SubmitConsumer
from imgpipe.ingest.tenants import ApiKeyAuthenticator, create_tenant
from imgpipe.ingest.terminate import reap_overdue
from imgpipe.ingest.wiring import IngestCore
from imgpipe.ratelimit import KeyedLimiter
from imgpipe.runtime.errors import PoisonMessage
from imgpipe.runtime.kafka import Record, build_producer
from imgpipe.store.models import OutboxMessage, Task, TaskState
from imgpipe.testing.kafka import read_topic
from imgpipe.v1 import events_pb2, result_pb2, task_pb2

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("registry_topics")]

PNG_1PX = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c63f8cfc0f01f0005000201e2b1a3a10000000049454e44ae426082"
    )
).decode()
REGISTRY = default_registry()


@pytest.fixture
def core(ingest_settings: IngestSettings, sessions: sessionmaker[Session]) -> IngestCore:
    return IngestCore.from_settings(ingest_settings)


@pytest.fixture
def client(core: IngestCore) -> Iterator[TestClient]:
    app = create_app(
        ApiDependencies(
            settings=core.settings,
            sessions=core.sessions,
            objects=core.objects,
            acceptor=core.acceptor,
            authenticator=ApiKeyAuthenticator(core.sessions, cache_seconds=0),
            limiter=KeyedLimiter(),
            result_topic=core.result_topic,
        )
    )
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def relay(core: IngestCore) -> Iterator[None]:
    stop = threading.Event()
    thread = threading.Thread(target=core.outbox_relay(), args=(stop,), daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(timeout=10)


def submit(client: TestClient, tenant: Any, **overrides: Any) -> Any:
    body = {"prompt": "watercolor", "image_base64": PNG_1PX, **overrides}
    headers = {**tenant.headers, **overrides.pop("headers", {})} if "headers" in overrides else tenant.headers
    return client.post("/v1/tasks", json=body, headers=headers)


def detect_messages_for(stack: Any, task_ids: set[str]) -> list[task_pb2.TaskEnvelope]:
    topic = REGISTRY.name(TopicKey.DETECT)
    seen = read_topic(
        stack.kafka_bootstrap_servers, topic, lambda got: task_ids <= {m.key_text for m in got}, timeout=30
    )
    return [task_pb2.TaskEnvelope.FromString(m.value or b"") for m in seen if m.key_text in task_ids]


def test_submit_stores_the_image_records_the_task_and_queues_it_for_detect(
    stack: Any, client: TestClient, tenant: Any, core: IngestCore, relay: None
) -> None:
    response = submit(client, tenant, callback_url="https://hooks.example.com/x", metadata={"order": "7"})

    assert response.status_code == 202
    task = response.json()
    assert response.headers["location"] == f"/v1/tasks/{task['id']}"
    assert task["state"] == "queued"
    assert task["callback"]["status"] == "pending"
    (envelope,) = detect_messages_for(stack, {task["id"]})
    assert envelope.tenant_id == tenant.id
    assert envelope.metadata == {"order": "7"}
    assert envelope.callback.url == "https://hooks.example.com/x"
    assert core.objects.get(envelope.source.object_key) == base64.b64decode(PNG_1PX)
    assert client.get(f"/v1/tasks/{task['id']}", headers=tenant.headers).json()["id"] == task["id"]


def test_the_same_idempotency_key_makes_one_task(
    client: TestClient, tenant: Any, sessions: sessionmaker[Session]
) -> None:
    headers = {**tenant.headers, "Idempotency-Key": "order-1"}
    first = client.post("/v1/tasks", json={"prompt": "p", "image_base64": PNG_1PX}, headers=headers)
    second = client.post("/v1/tasks", json={"prompt": "p", "image_base64": PNG_1PX}, headers=headers)

    assert (first.status_code, second.status_code) == (202, 200)
    assert first.json()["id"] == second.json()["id"]
    with sessions() as session:
        count = session.scalar(select(func.count()).select_from(Task).where(Task.tenant_id == tenant.id))
    assert count == 1


def test_errors_are_problem_json(client: TestClient, tenant: Any) -> None:
    unknown = client.get(f"/v1/tasks/{uuid.uuid4()}", headers=tenant.headers)
    assert unknown.status_code == 404
    assert unknown.headers["content-type"] == "application/problem+json"
    assert unknown.json()["code"] == "not_found"

    both_images = submit(client, tenant, image_url="https://example.com/a.png")
    assert both_images.status_code == 422
    assert both_images.json()["code"] == "invalid_request"

    not_base64 = submit(client, tenant, image_base64="%%%")
    assert not_base64.status_code == 422

    anonymous = client.post("/v1/tasks", json={"prompt": "p", "image_base64": PNG_1PX})
    assert anonymous.status_code == 401
    assert anonymous.json()["code"] == "unauthenticated"


def test_inline_images_over_the_cap_are_refused(client: TestClient, tenant: Any, core: IngestCore) -> None:
    too_big = base64.b64encode(b"\0" * (core.settings.max_inline_image_bytes + 1)).decode()
    response = submit(client, tenant, image_base64=too_big)
    assert response.status_code == 413
    assert response.json()["code"] == "image_too_large"


def test_tenants_are_rate_limited_and_batch_has_its_own_stricter_limit(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    tenant_id = f"t-{uuid.uuid4().hex[:12]}"
    with sessions.begin() as session:
        key = create_tenant(
            session,
            tenant_id,
            "slow",
            rate_per_second=0.01,
            burst=2,
            batch_rate_per_second=0.01,
            batch_burst=1,
        )
    headers = {"X-API-Key": key}
    body = {"prompt": "p", "image_base64": PNG_1PX}

    codes = [client.post("/v1/tasks", json=body, headers=headers).status_code for _ in range(3)]
    assert codes == [202, 202, 429]
    limited = client.post("/v1/tasks", json=body, headers=headers)
    assert limited.json()["code"] == "rate_limited"
    assert int(limited.headers["retry-after"]) >= 1

    batch = {"callback_url": "https://hooks.example.com/b", "tasks": [body, body]}
    assert client.post("/v1/tasks:batch", json=batch, headers=headers).status_code == 202
    assert client.post("/v1/tasks:batch", json=batch, headers=headers).status_code == 429


def test_batch_submit_shares_one_callback_url(client: TestClient, tenant: Any) -> None:
    body = {
        "callback_url": "https://hooks.example.com/batch",
        "callback_mode": "batched",
        "tasks": [{"prompt": f"p{i}", "image_base64": PNG_1PX} for i in range(3)],
    }
    response = client.post("/v1/tasks:batch", json=body, headers=tenant.headers)
    assert response.status_code == 202
    tasks = response.json()["tasks"]
    assert len(tasks) == 3
    assert {t["callback"]["url"] for t in tasks} == {"https://hooks.example.com/batch"}
    assert {t["batch_id"] for t in tasks} == {response.json()["batch_id"]}


def test_list_filters_and_paginates(client: TestClient, tenant: Any) -> None:
    ids = [submit(client, tenant).json()["id"] for _ in range(5)]
    page = client.get("/v1/tasks", params={"page_size": 2, "state": "queued"}, headers=tenant.headers).json()
    collected = [t["id"] for t in page["tasks"]]
    while page["next_page_token"]:
        page = client.get(
            "/v1/tasks",
            params={"page_size": 2, "page_token": page["next_page_token"]},
            headers=tenant.headers,
        ).json()
        collected += [t["id"] for t in page["tasks"]]
    assert sorted(collected) == sorted(ids)
    assert (
        client.get("/v1/tasks", params={"state": "succeeded"}, headers=tenant.headers).json()["tasks"] == []
    )


def test_cancel_ends_the_task_and_announces_the_result(
    stack: Any, client: TestClient, tenant: Any, relay: None
) -> None:
    task_id = submit(client, tenant).json()["id"]

    canceled = client.post(f"/v1/tasks/{task_id}/cancel", headers=tenant.headers)

    assert canceled.status_code == 202
    assert canceled.json()["state"] == "canceled"
    assert canceled.json()["error"]["code"] == "canceled"
    assert client.post(f"/v1/tasks/{task_id}/cancel", headers=tenant.headers).status_code == 202
    results = read_topic(
        stack.kafka_bootstrap_servers,
        REGISTRY.name(TopicKey.RESULT),
        lambda got: task_id in {m.key_text for m in got},
    )
    (result,) = [result_pb2.TaskResult.FromString(m.value or b"") for m in results if m.key_text == task_id]
    assert result.state == task_pb2.TASK_STATE_CANCELED


def test_prefer_wait_returns_when_the_task_ends(
    client: TestClient, tenant: Any, sessions: sessionmaker[Session]
) -> None:
    task_id = submit(client, tenant).json()["id"]
    finisher = threading.Timer(0.5, _mark_succeeded, args=(sessions, uuid.UUID(task_id)))
    finisher.start()
    response = client.get(f"/v1/tasks/{task_id}", headers={**tenant.headers, "Prefer": "wait=30"})
    finisher.join()
    assert response.json()["state"] == "succeeded"


def _mark_succeeded(sessions: sessionmaker[Session], task_id: uuid.UUID) -> None:
    with sessions.begin() as session:
        session.execute(update(Task).where(Task.id == task_id).values(state=TaskState.SUCCEEDED))


def test_outbox_keeps_tasks_while_kafka_is_unreachable_and_publishes_them_later(
    stack: Any, client: TestClient, tenant: Any, core: IngestCore, sessions: sessionmaker[Session]
) -> None:
    task_ids = {submit(client, tenant).json()["id"] for _ in range(3)}
    dead_broker = build_producer(
        core.settings.model_copy(update={"kafka_bootstrap_servers": "127.0.0.1:1"}), "dead"
    )
    broken = OutboxRelay(sessions, dead_broker, core.settings.database_url, flush_seconds=2)

    with pytest.raises(RuntimeError, match="not acknowledged"):
        broken.publish_pending()
    dead_broker.purge()  # the unsent copies; the rows stay in the outbox
    dead_broker.close()
    with sessions() as session:
        pending = {row.key for row in session.scalars(select(OutboxMessage))}
    assert task_ids <= pending  # nothing lost

    working = OutboxRelay(sessions, build_producer(core.settings, "ok"), core.settings.database_url)
    while working.publish_pending():
        pass
    assert {e.task_id for e in detect_messages_for(stack, task_ids)} == task_ids


def test_reaper_fails_overdue_tasks_with_timeout(
    client: TestClient, tenant: Any, core: IngestCore, sessions: sessionmaker[Session]
) -> None:
    task_id = uuid.UUID(submit(client, tenant).json()["id"])
    with sessions.begin() as session:
        session.execute(
            update(Task).where(Task.id == task_id).values(deadline_at=datetime.now(UTC) - timedelta(1))
        )

    while reap_overdue(sessions, core.result_topic):
        pass

    view = client.get(f"/v1/tasks/{task_id}", headers=tenant.headers).json()
    assert view["state"] == "failed"
    assert view["error"]["code"] == "timeout"


def test_projector_moves_states_forward_only(
    client: TestClient, tenant: Any, sessions: sessionmaker[Session]
) -> None:
    task_id = submit(client, tenant).json()["id"]
    projector = Projector(sessions, REGISTRY)
    events_topic, result_topic = REGISTRY.name(TopicKey.EVENTS), REGISTRY.name(TopicKey.RESULT)

    def record(topic: str, value: bytes) -> Record:
        return Record(
            topic=topic, partition=0, offset=0, key=task_id.encode(), value=value, headers={}, timestamp_ms=0
        )

    def progress(stage: int, fraction: float) -> bytes:
        event = events_pb2.TaskEvent(
            task_id=task_id,
            stage_progress=events_pb2.StageProgress(
                stage=stage, kind=events_pb2.STAGE_PROGRESS_KIND_STARTED, progress=fraction
            ),
        )
        event.occurred_at.GetCurrentTime()
        return event.SerializeToString()

    succeeded = result_pb2.TaskResult(
        task_id=task_id,
        state=task_pb2.TASK_STATE_SUCCEEDED,
        result=task_pb2.Artifact(object_key=f"tasks/{task_id}/matte.png"),
        processing_ms=1234,
    )
    succeeded.completed_at.GetCurrentTime()
    succeeded.started_at.GetCurrentTime()
    projector.handle(record(events_topic, progress(task_pb2.STAGE_GENERATE, 2 / 3)))
    projector.handle(record(events_topic, progress(task_pb2.STAGE_DETECT, 1 / 3)))  # late, out of order
    projector.write_batch()
    middle = client.get(f"/v1/tasks/{task_id}", headers=tenant.headers).json()
    projector.handle(record(result_topic, succeeded.SerializeToString()))
    projector.handle(record(events_topic, progress(task_pb2.STAGE_MATTE, 0.9)))  # replayed after the end
    projector.write_batch()
    final = client.get(f"/v1/tasks/{task_id}", headers=tenant.headers).json()

    assert middle["state"] == "processing"
    assert middle["progress"] == pytest.approx(2 / 3)
    assert middle["started_at"] is not None
    assert final["state"] == "succeeded"
    assert final["progress"] == 1.0
    assert final["processing_ms"] == 1234
    assert final["result_url"].startswith("http")
    with pytest.raises(PoisonMessage):
        projector.handle(record(result_topic, b"\xff\xff not protobuf"))


def test_submit_topic_accepts_json_and_records_invalid_submissions(
    client: TestClient, tenant: Any, core: IngestCore
) -> None:
    consumer = SubmitConsumer(core.acceptor, REGISTRY.topic(TopicKey.SUBMIT))

    def record(value: bytes, key: bytes | None = None) -> Record:
        return Record(topic="submit", partition=0, offset=0, key=key, value=value, headers={}, timestamp_ms=0)

    fields = {"prompt": "noir", "image_base64": PNG_1PX, "tenant_id": tenant.id, "idempotency_key": "k1"}
    good = json.dumps(fields)
    consumer.handle(record(good.encode()))
    consumer.handle(record(good.encode()))  # a replay makes no second task
    listed = client.get("/v1/tasks", headers=tenant.headers).json()["tasks"]
    assert [t["state"] for t in listed] == ["queued"]

    bad = f'{{"prompt": "noir", "tenant_id": "{tenant.id}", "idempotency_key": "k2"}}'
    with pytest.raises(PoisonMessage, match="invalid submission"):
        consumer.handle(record(bad.encode()))
    failed = client.get("/v1/tasks", params={"state": "failed"}, headers=tenant.headers).json()["tasks"]
    assert [t["error"]["code"] for t in failed] == ["invalid_request"]

    with pytest.raises(PoisonMessage):
        consumer.handle(record(b"not json at all"))
    unknown_tenant = good.replace(tenant.id, "nobody")
    with pytest.raises(PoisonMessage, match="no tenant"):
        consumer.handle(record(unknown_tenant.encode()))
