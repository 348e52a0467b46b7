"""ingest's side of callbacks against the real stack: projecting delivery attempts into the task record,
the attempts in GET /v1/tasks/{id}, the tenant's webhook secrets, and the admin API (callback policies
on the real compacted topic, replays onto the real callback request topic)."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from google.protobuf.message import DecodeError
from pydantic import SecretStr
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from imgpipe.contracts.registry import TopicKey, default_registry
from imgpipe.ingest.api import ApiDependencies, create_app
from imgpipe.ingest.callback_admin import CallbackAdmin, parse_policy_key
from imgpipe.ingest.projector import Projector
from imgpipe.ingest.settings import IngestSettings
from imgpipe.ingest.tenants import ApiKeyAuthenticator
from imgpipe.ingest.wiring import IngestCore
from imgpipe.ratelimit import KeyedLimiter
from imgpipe.runtime.kafka import Received, Record, build_producer
from imgpipe.store.models import CallbackAttempt, CallbackStatus, OutboxMessage, Task, TaskState
from imgpipe.testing.kafka import read_topic
from imgpipe.v1 import callback_pb2, events_pb2, result_pb2, task_pb2

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("registry_topics")]

REGISTRY = default_registry()
EVENTS_TOPIC = REGISTRY.name(TopicKey.EVENTS)
RESULT_TOPIC = REGISTRY.name(TopicKey.RESULT)
REQUESTS_TOPIC = REGISTRY.name(TopicKey.CALLBACK_REQUESTS)
POLICIES_TOPIC = REGISTRY.name(TopicKey.CALLBACK_POLICIES)
ADMIN_TOKEN = "admin-" + uuid.uuid4().hex
MASTER_KEYS = "master-new-key,master-old-key"
PNG_1PX = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c63f8cfc0f01f0005000201e2b1a3a10000000049454e44ae426082"
    )
).decode()
OUTCOME = callback_pb2.CallbackOutcome


def make_client(core: IngestCore, callback_admin: CallbackAdmin | None) -> TestClient:
    return TestClient(
        create_app(
            ApiDependencies(
                settings=core.settings,
                sessions=core.sessions,
                objects=core.objects,
                acceptor=core.acceptor,
                authenticator=ApiKeyAuthenticator(core.sessions, cache_seconds=0),
                limiter=KeyedLimiter(),
                result_topic=core.result_topic,
                callback_admin=callback_admin,
            )
        )
    )


@pytest.fixture
def core(ingest_settings: IngestSettings, sessions: sessionmaker[Session]) -> IngestCore:
    settings = ingest_settings.model_copy(
        update={"admin_token": SecretStr(ADMIN_TOKEN), "webhook_signing_keys": SecretStr(MASTER_KEYS)}
    )
    return IngestCore.from_settings(settings)


@pytest.fixture
def client(core: IngestCore) -> Iterator[TestClient]:
    with make_client(core, core.callback_admin()) as test_client:
        yield test_client


@pytest.fixture
def unconfigured(ingest_settings: IngestSettings, sessions: sessionmaker[Session]) -> Iterator[TestClient]:
    """The API as deployed without an admin token or webhook master keys."""
    with make_client(IngestCore.from_settings(ingest_settings), None) as test_client:
        yield test_client


@pytest.fixture
def projector(sessions: sessionmaker[Session]) -> Projector:
    return Projector(sessions, REGISTRY)


ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def unique_url(path: str = "hook") -> str:
    return f"https://hooks-{uuid.uuid4().hex[:10]}.example.com/{path}"


def submit(client: TestClient, tenant: Any, callback_url: str | None, **fields: Any) -> str:
    body = {"prompt": "watercolor", "image_base64": PNG_1PX, **fields}
    if callback_url is not None:
        body["callback_url"] = callback_url
    response = client.post("/v1/tasks", json=body, headers=tenant.headers)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def record(topic: str, key: str, message: Any) -> Record:
    return Record(
        topic=topic,
        partition=0,
        offset=0,
        key=key.encode(),
        value=message.SerializeToString(),
        headers={},
        timestamp_ms=0,
    )


def at(seconds: float) -> datetime:
    """A microsecond-precision time (what Postgres keeps) `seconds` from a fixed base."""
    return datetime(2026, 11, 23, 12, 0, tzinfo=UTC) + timedelta(seconds=seconds)


def attempt_event(
    task_id: str,
    outcome: int,
    *,
    webhook_id: str = "msg_1",
    attempt: int = 1,
    url: str = "https://hooks.example.com/x",
    status_code: int = 0,
    latency_ms: int = 0,
    error: str = "",
    attempted_at: datetime | None = None,
    next_attempt_at: datetime | None = None,
    task_ids: Sequence[str] = (),
) -> events_pb2.TaskEvent:
    callback_attempt = callback_pb2.CallbackAttempt(
        webhook_id=webhook_id,
        task_ids=list(task_ids) or [task_id],
        url=url,
        attempt=attempt,
        status_code=status_code,
        latency_ms=latency_ms,
        error=error,
        outcome=outcome,  # type: ignore[arg-type]
    )
    callback_attempt.attempted_at.FromDatetime(attempted_at or at(attempt))
    if next_attempt_at is not None:
        callback_attempt.next_attempt_at.FromDatetime(next_attempt_at)
    event = events_pb2.TaskEvent(task_id=task_id, callback_attempt=callback_attempt)
    event.occurred_at.FromDatetime(attempted_at or at(attempt))
    return event


def project(projector: Projector, *messages: events_pb2.TaskEvent | result_pb2.TaskResult) -> None:
    """One consumed batch: handle each message, then the batch write the consume loop calls."""
    for message in messages:
        topic = RESULT_TOPIC if isinstance(message, result_pb2.TaskResult) else EVENTS_TOPIC
        projector.handle(record(topic, message.task_id, message))
    projector.write_batch()


def callback_status(sessions: sessionmaker[Session], task_id: str) -> str:
    with sessions() as session:
        return session.get_one(Task, uuid.UUID(task_id)).callback_status.value


def attempt_count(sessions: sessionmaker[Session], task_id: str) -> int:
    with sessions() as session:
        return (
            session.scalar(
                select(func.count())
                .select_from(CallbackAttempt)
                .where(CallbackAttempt.task_id == uuid.UUID(task_id))
            )
            or 0
        )


# -- projecting attempts ------------------------------------------------------------------------


def test_a_delivered_attempt_marks_the_callback_delivered_and_later_failures_never_undo_it(
    client: TestClient, tenant: Any, projector: Projector, sessions: sessionmaker[Session]
) -> None:
    url = unique_url()
    task_id = submit(client, tenant, url)
    assert callback_status(sessions, task_id) == "pending"

    retry_at = at(60)
    project(
        projector,
        attempt_event(
            task_id,
            OUTCOME.CALLBACK_OUTCOME_RETRYING,
            url=url,
            status_code=503,
            latency_ms=40,
            error="HTTP 503",
            next_attempt_at=retry_at,
        ),
    )
    assert callback_status(sessions, task_id) == "pending"

    project(
        projector,
        attempt_event(
            task_id, OUTCOME.CALLBACK_OUTCOME_DELIVERED, url=url, attempt=2, status_code=200, latency_ms=12
        ),
    )
    assert callback_status(sessions, task_id) == "delivered"

    # A later FAILED (another delivery of the same task, e.g. in a batch) and DISABLED do not regress it.
    project(
        projector,
        attempt_event(
            task_id, OUTCOME.CALLBACK_OUTCOME_FAILED, webhook_id="msg_2", attempt=6, error="HTTP 500"
        ),
        attempt_event(task_id, OUTCOME.CALLBACK_OUTCOME_DISABLED, webhook_id="msg_3", attempt=1),
    )
    assert callback_status(sessions, task_id) == "delivered"

    attempts = client.get(f"/v1/tasks/{task_id}", headers=tenant.headers).json()["callback"]["attempts"]
    assert [(a["webhook_id"], a["attempt"], a["outcome"]) for a in attempts] == [
        ("msg_1", 1, "retrying"),
        ("msg_3", 1, "disabled"),
        ("msg_1", 2, "delivered"),
        ("msg_2", 6, "failed"),
    ]
    first = attempts[0]
    assert (first["status_code"], first["latency_ms"], first["error"]) == (503, 40, "HTTP 503")
    assert datetime.fromisoformat(first["attempted_at"]) == at(1)
    assert datetime.fromisoformat(first["next_attempt_at"]) == retry_at
    delivered = attempts[2]
    assert (delivered["status_code"], delivered["latency_ms"], delivered["error"]) == (200, 12, None)
    disabled = attempts[1]
    assert (disabled["status_code"], disabled["latency_ms"]) == (None, None)  # nothing was sent


def test_failed_and_disabled_attempts_fail_the_callback_while_retrying_and_rate_limited_leave_it_pending(
    client: TestClient, tenant: Any, projector: Projector, sessions: sessionmaker[Session]
) -> None:
    failed, disabled, retrying, limited = (submit(client, tenant, unique_url()) for _ in range(4))

    project(
        projector,
        attempt_event(failed, OUTCOME.CALLBACK_OUTCOME_FAILED, attempt=6, error="connection refused"),
        attempt_event(disabled, OUTCOME.CALLBACK_OUTCOME_DISABLED),
        attempt_event(retrying, OUTCOME.CALLBACK_OUTCOME_RETRYING, status_code=500, next_attempt_at=at(30)),
        attempt_event(limited, OUTCOME.CALLBACK_OUTCOME_RATE_LIMITED, next_attempt_at=at(5)),
    )

    assert [callback_status(sessions, t) for t in (failed, disabled, retrying, limited)] == [
        "failed",
        "failed",
        "pending",
        "pending",
    ]
    # A replayed delivery may still succeed: failed -> delivered.
    project(
        projector,
        attempt_event(failed, OUTCOME.CALLBACK_OUTCOME_DELIVERED, webhook_id="msg_r", status_code=204),
    )
    assert callback_status(sessions, failed) == "delivered"


def test_duplicate_attempts_are_stored_once_and_move_nothing(
    client: TestClient, tenant: Any, projector: Projector, sessions: sessionmaker[Session]
) -> None:
    task_id = submit(client, tenant, unique_url())
    failure = attempt_event(task_id, OUTCOME.CALLBACK_OUTCOME_FAILED, attempt=6, status_code=500)

    project(projector, failure, failure)  # twice in one batch
    project(projector, failure)  # and again in a later one
    assert attempt_count(sessions, task_id) == 1
    assert callback_status(sessions, task_id) == "failed"

    # After a replay put it back to pending, the old FAILED event read again (a rewound batch, a
    # restarted projector) must not fail the replay's delivery in advance.
    with sessions.begin() as session:
        session.execute(
            update(Task).where(Task.id == uuid.UUID(task_id)).values(callback_status=CallbackStatus.PENDING)
        )
    project(projector, failure)
    assert callback_status(sessions, task_id) == "pending"
    assert attempt_count(sessions, task_id) == 1


def test_a_batched_attempt_is_recorded_for_every_task_and_unknown_tasks_are_skipped(
    client: TestClient, tenant: Any, projector: Projector, sessions: sessionmaker[Session]
) -> None:
    url = unique_url("batch")
    first, second = submit(client, tenant, url), submit(client, tenant, url)
    unknown = str(uuid.uuid4())
    batch = [first, second, unknown]

    project(
        projector,
        *[
            attempt_event(
                task, OUTCOME.CALLBACK_OUTCOME_DELIVERED, webhook_id="msg_b", url=url, task_ids=batch
            )
            for task in batch
        ],
    )

    assert [callback_status(sessions, t) for t in (first, second)] == ["delivered", "delivered"]
    with sessions() as session:
        rows = session.scalars(select(CallbackAttempt).where(CallbackAttempt.webhook_id == "msg_b")).all()
    assert {str(row.task_id) for row in rows} >= {first, second}
    assert unknown not in {str(row.task_id) for row in rows}


def test_unknown_outcomes_are_ignored_and_the_rest_of_the_batch_is_written(
    client: TestClient, tenant: Any, projector: Projector, sessions: sessionmaker[Session]
) -> None:
    task_id = submit(client, tenant, unique_url())
    project(
        projector,
        attempt_event(task_id, OUTCOME.CALLBACK_OUTCOME_UNSPECIFIED),
        attempt_event(task_id, OUTCOME.CALLBACK_OUTCOME_DELIVERED, attempt=2, status_code=200),
    )
    assert attempt_count(sessions, task_id) == 1
    assert callback_status(sessions, task_id) == "delivered"


def test_get_task_shows_the_last_50_attempts_oldest_first_and_lists_leave_them_out(
    client: TestClient, tenant: Any, projector: Projector
) -> None:
    task_id = submit(client, tenant, unique_url())
    events = [
        attempt_event(
            task_id, OUTCOME.CALLBACK_OUTCOME_RETRYING, attempt=n, status_code=500, attempted_at=at(n)
        )
        for n in range(1, 56)
    ]
    project(projector, *reversed(events))  # arrival order does not matter

    attempts = client.get(f"/v1/tasks/{task_id}", headers=tenant.headers).json()["callback"]["attempts"]
    assert [a["attempt"] for a in attempts] == list(range(6, 56))
    listed = client.get("/v1/tasks", headers=tenant.headers).json()["tasks"]
    assert [t["callback"]["attempts"] for t in listed] == [None]


# -- webhook secrets ----------------------------------------------------------------------------


def test_tenants_get_their_signing_secrets_current_first(client: TestClient, tenant: Any) -> None:
    signing = pytest.importorskip("imgpipe.callback.signing")

    response = client.get("/v1/webhook-secret", headers=tenant.headers)

    assert response.status_code == 200
    secrets = response.json()["secrets"]
    assert secrets == [
        signing.tenant_secret("master-new-key", tenant.id),
        signing.tenant_secret("master-old-key", tenant.id),
    ]
    assert all(secret.startswith("whsec_") for secret in secrets)
    assert client.get("/v1/webhook-secret").status_code == 401


def test_webhook_secrets_are_404_when_no_master_keys_are_configured(
    unconfigured: TestClient, tenant: Any
) -> None:
    response = unconfigured.get("/v1/webhook-secret", headers=tenant.headers)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"] == "webhooks not configured"


# -- admin authentication -----------------------------------------------------------------------

ADMIN_ROUTES = [
    ("GET", "/v1/admin/callback-policies", None),
    ("GET", "/v1/admin/callback-policies/example.com", None),
    ("PUT", "/v1/admin/callback-policies/example.com", {"scope": "host"}),
    ("DELETE", "/v1/admin/callback-policies/example.com", None),
    ("POST", "/v1/admin/callbacks:replay", {"task_id": str(uuid.uuid4())}),
]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
def test_admin_routes_need_the_admin_token(
    client: TestClient, tenant: Any, method: str, path: str, body: Any
) -> None:
    missing = client.request(method, path, json=body)
    assert missing.status_code == 401
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.headers["www-authenticate"] == "Bearer"
    assert client.request(method, path, json=body, headers={"Authorization": "Basic eDp5"}).status_code == 401

    wrong = client.request(method, path, json=body, headers={"Authorization": "Bearer not-the-token"})
    assert wrong.status_code == 403
    assert wrong.json()["code"] == "forbidden"
    # A tenant's API key is not an admin token.
    assert client.request(method, path, json=body, headers=tenant.headers).status_code == 403


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
def test_admin_routes_are_404_without_an_admin_token_setting(
    unconfigured: TestClient, method: str, path: str, body: Any
) -> None:
    response = unconfigured.request(method, path, json=body, headers=ADMIN)
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


# -- callback policies --------------------------------------------------------------------------


def policy_records(stack: Any, until_key: str, until: Any) -> list[Received]:
    records = read_topic(
        stack.kafka_bootstrap_servers,
        POLICIES_TOPIC,
        lambda got: until([m for m in got if m.key_text == until_key]),
        timeout=30,
    )
    return [m for m in records if m.key_text == until_key]


def test_policies_round_trip_through_the_compacted_topic(stack: Any, client: TestClient) -> None:
    url = unique_url("cb") + "?source=imgpipe"
    host = f"Hooks-{uuid.uuid4().hex[:8]}.Example.com"
    url_body = {
        "scope": "url",
        "rate_per_second": 2.5,
        "burst": 5,
        "batch_size": 20,
        "max_delay_ms": 1500,
        "mode_override": "batched",
        "timeout_ms": 3000,
        "disabled": False,
    }

    stored = client.put(f"/v1/admin/callback-policies/{quote(url, safe='')}", json=url_body, headers=ADMIN)
    host_stored = client.put(
        f"/v1/admin/callback-policies/{host}", json={"scope": "host", "disabled": True}, headers=ADMIN
    )

    assert stored.status_code == 200, stored.text
    assert stored.json() == {**url_body, "key": url, "updated_at": stored.json()["updated_at"]}
    assert host_stored.json()["key"] == host.lower()  # what urlsplit(url).hostname gives the callback app
    listed = {
        p["key"]: p for p in client.get("/v1/admin/callback-policies", headers=ADMIN).json()["policies"]
    }
    assert listed[url] == stored.json()
    assert listed[host.lower()] == host_stored.json()
    assert (
        client.get(f"/v1/admin/callback-policies/{quote(url, safe='')}", headers=ADMIN).json()
        == stored.json()
    )

    # On the topic: keyed by the policy key, a serialized CallbackPolicy.
    (on_topic,) = policy_records(stack, url, lambda mine: len(mine) >= 1)
    policy = callback_pb2.CallbackPolicy.FromString(on_topic.value or b"")
    assert (policy.key, policy.scope, policy.mode_override) == (
        url,
        callback_pb2.POLICY_SCOPE_URL,
        task_pb2.CALLBACK_MODE_BATCHED,
    )
    assert (policy.rate_per_second, policy.burst, policy.batch_size) == (2.5, 5, 20)
    assert (policy.max_delay_ms, policy.timeout_ms, policy.disabled) == (1500, 3000, False)

    # A new write replaces the policy; a delete is a tombstone and the policy is gone.
    replaced = client.put(
        f"/v1/admin/callback-policies/{quote(url, safe='')}", json={"scope": "url", "burst": 9}, headers=ADMIN
    )
    assert replaced.json()["burst"] == 9 and replaced.json()["mode_override"] is None
    assert (
        client.delete(f"/v1/admin/callback-policies/{quote(url, safe='')}", headers=ADMIN).status_code == 204
    )
    assert (
        client.delete(f"/v1/admin/callback-policies/{quote(url, safe='')}", headers=ADMIN).status_code == 204
    )

    keys = {p["key"] for p in client.get("/v1/admin/callback-policies", headers=ADMIN).json()["policies"]}
    assert url not in keys and host.lower() in keys
    gone = client.get(f"/v1/admin/callback-policies/{quote(url, safe='')}", headers=ADMIN)
    assert gone.status_code == 404
    records = policy_records(stack, url, lambda mine: len(mine) >= 4)
    assert [m.value is None for m in records] == [False, False, True, True]
    assert client.delete(f"/v1/admin/callback-policies/{host}", headers=ADMIN).status_code == 204


@pytest.mark.parametrize(
    ("key", "body", "complaint"),
    [
        ("example.com", {"scope": "url"}, "scope"),
        (quote("https://example.com/x", safe=""), {"scope": "host"}, "scope"),
        ("example.com:8443", {"scope": "host"}, "host name"),
        (quote("ftp://example.com/x", safe=""), {"scope": "url"}, "URL"),
        ("exa mple.com", {"scope": "host"}, "host name"),
        ("example.com", {"scope": "host", "rate_per_second": -1}, "rate_per_second"),
        ("example.com", {"scope": "host", "batch_size": 5000}, "batch_size"),
        ("example.com", {"scope": "host", "timeout_ms": 10_000_000}, "timeout_ms"),
        ("example.com", {"scope": "host", "mode_override": "eventually"}, "mode_override"),
        ("example.com", {"scope": "host", "colour": "red"}, "colour"),
        ("example.com", {"rate_per_second": 1}, "scope"),
    ],
)
def test_invalid_policies_are_refused(client: TestClient, key: str, body: Any, complaint: str) -> None:
    response = client.put(f"/v1/admin/callback-policies/{key}", json=body, headers=ADMIN)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_request"
    assert complaint in response.text


def test_policy_keys_are_normalized_as_the_callback_app_looks_them_up() -> None:
    assert parse_policy_key("https://Hooks.Example.com") == ("url", "https://hooks.example.com/")
    assert parse_policy_key("Bücher.Example") == ("host", "xn--bcher-kva.example")
    assert parse_policy_key("[::1]") == ("host", "::1")
    assert parse_policy_key("10.0.0.7") == ("host", "10.0.0.7")


def test_kafka_being_unreachable_is_a_503(
    core: IngestCore, sessions: sessionmaker[Session], tenant: Any
) -> None:
    dead = core.settings.model_copy(update={"kafka_bootstrap_servers": "127.0.0.1:1"})
    producer = build_producer(dead, "dead")
    admin = CallbackAdmin(dead, REGISTRY, sessions, producer, timeout_seconds=1.5)
    with make_client(core, admin) as client:
        put = client.put("/v1/admin/callback-policies/example.com", json={"scope": "host"}, headers=ADMIN)
        listed = client.get("/v1/admin/callback-policies", headers=ADMIN)
        task_id = submit(client, tenant, unique_url())
        _finish(sessions, task_id, CallbackStatus.FAILED)
        replay = client.post("/v1/admin/callbacks:replay", json={"task_id": task_id}, headers=ADMIN)

    assert (put.status_code, listed.status_code, replay.status_code) == (503, 503, 503)
    assert put.json()["code"] == "kafka_unavailable"
    assert replay.headers["retry-after"] == "5"
    assert callback_status(sessions, task_id) == "failed"  # rolled back with the failed send


# -- replays ------------------------------------------------------------------------------------


def _finish(sessions: sessionmaker[Session], task_id: str, status: CallbackStatus, **values: Any) -> None:
    """End a task directly in the table (for selection tests that need no faithful result)."""
    with sessions.begin() as session:
        session.execute(
            update(Task)
            .where(Task.id == uuid.UUID(task_id))
            .values(
                state=values.pop("state", TaskState.FAILED),
                completed_at=values.pop("completed_at", datetime.now(UTC)),
                error_code="timeout",
                error_message="too slow",
                callback_status=status,
                **values,
            )
        )


def created_at(sessions: sessionmaker[Session], task_id: str) -> datetime:
    with sessions() as session:
        return session.get_one(Task, uuid.UUID(task_id)).created_at


def commands_for(stack: Any, replay_id: str, count: int) -> list[Received]:
    def mine(messages: Sequence[Received]) -> list[Received]:
        found = []
        for message in messages:
            try:
                command = callback_pb2.CallbackCommand.FromString(message.value or b"")
            except DecodeError:  # test_callback's poison message, when the stack outlived a run
                continue
            if command.replay_id == replay_id:
                found.append(message)
        return found

    return mine(
        read_topic(stack.kafka_bootstrap_servers, REQUESTS_TOPIC, lambda got: len(mine(got)) >= count)
    )


def test_replaying_one_task_sends_its_original_result_again(
    stack: Any,
    client: TestClient,
    tenant: Any,
    projector: Projector,
    sessions: sessionmaker[Session],
) -> None:
    url = unique_url()
    task_id = submit(
        client, tenant, url, callback_mode="batched", include_inline_result=True, metadata={"o": "7"}
    )
    original = result_pb2.TaskResult(
        task_id=task_id,
        tenant_id=tenant.id,
        state=task_pb2.TASK_STATE_SUCCEEDED,
        result=task_pb2.Artifact(
            object_key=f"tasks/{task_id}/matte.png",
            content_type="image/png",
            width=350,
            height=420,
            size_bytes=123_456,
            sha256="ab" * 32,
        ),
        processing_ms=1850,
        callback=task_pb2.CallbackSpec(
            url=url, mode=task_pb2.CALLBACK_MODE_BATCHED, include_inline_result=True
        ),
        metadata={"o": "7"},
    )
    original.created_at.FromDatetime(created_at(sessions, task_id))
    original.started_at.FromDatetime(at(1))
    original.completed_at.FromDatetime(at(3))
    project(projector, original)
    project(projector, attempt_event(task_id, OUTCOME.CALLBACK_OUTCOME_FAILED, attempt=6, url=url))
    assert callback_status(sessions, task_id) == "failed"

    response = client.post("/v1/admin/callbacks:replay", json={"task_id": task_id}, headers=ADMIN)

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["replayed"], body["truncated"]) == (1, False)
    (message,) = commands_for(stack, body["replay_id"], 1)
    assert message.key_text == url
    command = callback_pb2.CallbackCommand.FromString(message.value or b"")
    assert command.WhichOneof("command") == "result"
    assert command.result == original
    assert callback_status(sessions, task_id) == "pending"

    # Replaying a delivered callback sends it again but does not take "delivered" back.
    project(
        projector, attempt_event(task_id, OUTCOME.CALLBACK_OUTCOME_DELIVERED, webhook_id="msg_r", url=url)
    )
    again = client.post("/v1/admin/callbacks:replay", json={"task_id": task_id}, headers=ADMIN).json()
    assert again["replay_id"] != body["replay_id"]
    assert len(commands_for(stack, again["replay_id"], 1)) == 1
    assert callback_status(sessions, task_id) == "delivered"


def test_a_replayed_failure_keeps_its_error_code_message_and_stage(
    stack: Any, client: TestClient, tenant: Any, projector: Projector, sessions: sessionmaker[Session]
) -> None:
    url = unique_url()
    task_id = submit(client, tenant, url)
    original = result_pb2.TaskResult(
        task_id=task_id,
        tenant_id=tenant.id,
        state=task_pb2.TASK_STATE_FAILED,
        error=task_pb2.TaskError(
            code=task_pb2.ERROR_CODE_NO_PET_DETECTED, message="no pet found", stage=task_pb2.STAGE_DETECT
        ),
        processing_ms=90,
        callback=task_pb2.CallbackSpec(url=url, mode=task_pb2.CALLBACK_MODE_IMMEDIATE),
    )
    original.created_at.FromDatetime(created_at(sessions, task_id))
    original.started_at.FromDatetime(at(1))
    original.completed_at.FromDatetime(at(2))
    project(projector, original)

    body = client.post("/v1/admin/callbacks:replay", json={"task_id": task_id}, headers=ADMIN).json()

    (message,) = commands_for(stack, body["replay_id"], 1)
    assert callback_pb2.CallbackCommand.FromString(message.value or b"").result == original


def announced_result(stack: Any, sessions: sessionmaker[Session], task_id: str) -> result_pb2.TaskResult:
    """The TaskResult ingest queued for a task it ended: still in the outbox, or already on the topic
    when a relay (of a pipeline sharing this stack) published it."""
    with sessions() as session:
        value = session.scalar(
            select(OutboxMessage.value).where(
                OutboxMessage.topic == RESULT_TOPIC, OutboxMessage.key == task_id
            )
        )
    if value is None:
        published = read_topic(
            stack.kafka_bootstrap_servers, RESULT_TOPIC, lambda got: task_id in {m.key_text for m in got}
        )
        value = next(m.value for m in published if m.key_text == task_id)
    return result_pb2.TaskResult.FromString(value or b"")


def test_replaying_a_canceled_task_sends_what_cancel_announced(
    stack: Any, client: TestClient, tenant: Any, sessions: sessionmaker[Session]
) -> None:
    url = unique_url()
    task_id = submit(client, tenant, url, metadata={"k": "v"})
    assert client.post(f"/v1/tasks/{task_id}/cancel", headers=tenant.headers).status_code == 202

    body = client.post("/v1/admin/callbacks:replay", json={"task_id": task_id}, headers=ADMIN).json()

    (message,) = commands_for(stack, body["replay_id"], 1)
    result = callback_pb2.CallbackCommand.FromString(message.value or b"").result
    assert result == announced_result(stack, sessions, task_id)
    assert result.state == task_pb2.TASK_STATE_CANCELED
    assert (result.error.code, result.error.message) == (
        task_pb2.ERROR_CODE_CANCELED,
        "canceled by the client",
    )
    assert (result.callback.url, dict(result.metadata)) == (url, {"k": "v"})


def test_replays_that_cannot_be_done_are_refused(
    client: TestClient, tenant: Any, sessions: sessionmaker[Session]
) -> None:
    running = submit(client, tenant, unique_url())
    no_callback = submit(client, tenant, None)
    _finish(sessions, no_callback, CallbackStatus.NOT_REQUIRED)

    def replay(body: Any) -> Any:
        return client.post("/v1/admin/callbacks:replay", json=body, headers=ADMIN)

    unknown = replay({"task_id": str(uuid.uuid4())})
    assert (unknown.status_code, unknown.json()["code"]) == (404, "not_found")
    assert (replay({"task_id": running}).status_code, replay({"task_id": running}).json()["code"]) == (
        409,
        "not_finished",
    )
    assert replay({"task_id": no_callback}).json()["code"] == "no_callback"
    for invalid in (
        {},
        {"task_id": running, "callback_url": "https://example.com/x", "since": "2026-01-01T00:00:00Z"},
        {"callback_url": "https://example.com/x"},
        {"callback_url": "https://example.com/x", "since": "2026-01-01T00:00:00"},  # no offset
        {"callback_url": "not a url", "since": "2026-01-01T00:00:00Z"},
        {"task_id": running, "since": "2026-01-01T00:00:00Z"},
    ):
        assert replay(invalid).status_code == 422, invalid


def test_replaying_a_url_sends_the_failed_callbacks_completed_since(
    stack: Any, client: TestClient, tenant: Any, sessions: sessionmaker[Session]
) -> None:
    url = unique_url()
    since = datetime.now(UTC) - timedelta(minutes=5)
    before, failed, delivered, running = (submit(client, tenant, url) for _ in range(4))
    other_url = submit(client, tenant, unique_url())
    _finish(sessions, before, CallbackStatus.FAILED, completed_at=since - timedelta(seconds=1))
    _finish(sessions, failed, CallbackStatus.FAILED, completed_at=since)
    _finish(sessions, delivered, CallbackStatus.DELIVERED, completed_at=since + timedelta(seconds=1))
    _finish(sessions, other_url, CallbackStatus.FAILED)
    body = {"callback_url": url, "since": since.isoformat()}

    only_failed = client.post("/v1/admin/callbacks:replay", json=body, headers=ADMIN).json()
    everything = client.post(
        "/v1/admin/callbacks:replay", json={**body, "only_failed": False}, headers=ADMIN
    ).json()

    assert (only_failed["replayed"], everything["replayed"]) == (1, 2)
    (one,) = commands_for(stack, only_failed["replay_id"], 1)
    assert one.key_text == url
    assert callback_pb2.CallbackCommand.FromString(one.value or b"").result.task_id == failed
    both = commands_for(stack, everything["replay_id"], 2)
    assert {callback_pb2.CallbackCommand.FromString(m.value or b"").result.task_id for m in both} == {
        failed,
        delivered,
    }
    assert {m.key_text for m in both} == {url}
    assert [callback_status(sessions, t) for t in (before, failed, delivered, running, other_url)] == [
        "failed",
        "pending",
        "delivered",
        "pending",
        "failed",
    ]


def test_a_replay_takes_at_most_its_limit_and_says_so(
    stack: Any, core: IngestCore, tenant: Any, sessions: sessionmaker[Session]
) -> None:
    limited = IngestCore.from_settings(core.settings.model_copy(update={"admin_replay_limit": 2}))
    url = unique_url()
    since = datetime.now(UTC) - timedelta(minutes=1)
    with make_client(limited, limited.callback_admin()) as client:
        tasks = [submit(client, tenant, url) for _ in range(3)]
        for n, task_id in enumerate(tasks):
            _finish(sessions, task_id, CallbackStatus.FAILED, completed_at=since + timedelta(seconds=n))
        body = {"callback_url": url, "since": since.isoformat()}

        first = client.post("/v1/admin/callbacks:replay", json=body, headers=ADMIN).json()
        rest = client.post("/v1/admin/callbacks:replay", json=body, headers=ADMIN).json()

    assert (first["replayed"], first["truncated"], first["limit"]) == (2, True, 2)
    assert (rest["replayed"], rest["truncated"]) == (1, False)
    oldest = commands_for(stack, first["replay_id"], 2)
    assert [callback_pb2.CallbackCommand.FromString(m.value or b"").result.task_id for m in oldest] == tasks[
        :2
    ]
    (last,) = commands_for(stack, rest["replay_id"], 1)
    assert callback_pb2.CallbackCommand.FromString(last.value or b"").result.task_id == tasks[2]
