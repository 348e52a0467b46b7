"""Dead letters on the running pipeline: a malformed submission is dead-lettered, `imgpipe deadletters`
lists and shows it and replays it to its origin topic, and the admin API does the same."""

from __future__ import annotations

import base64
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from confluent_kafka import Consumer, TopicPartition

from imgpipe.cli import main
from imgpipe.contracts.registry import TopicKey, default_registry
from imgpipe.localstack.pipeline import LocalPipeline
from imgpipe.localstack.waiting import wait_until
from imgpipe.runtime.deadletters import DeadLetter, DeadLetters, Selection
from imgpipe.runtime.kafka import (
    ATTEMPT_HEADER,
    DEAD_LETTER_REASON_HEADER,
    ORIGIN_TOPIC_HEADER,
    REPLAY_COUNT_HEADER,
    REPLAYED_FROM_HEADER,
    Received,
)
from imgpipe.runtime.settings import RuntimeSettings
from imgpipe.testing.kafka import produce

pytestmark = pytest.mark.integration
REGISTRY = default_registry()
SUBMIT = REGISTRY.name(TopicKey.SUBMIT)
DEAD_LETTER = REGISTRY.name(TopicKey.DEAD_LETTER)
MALFORMED = b"\xff\x00 not a valid submission"


@pytest.fixture
def bootstrap(pipeline: LocalPipeline, monkeypatch: pytest.MonkeyPatch) -> str:
    """The pipeline's broker, also for the `imgpipe deadletters` commands run in this process."""
    servers = pipeline.endpoints.kafka_bootstrap_servers
    monkeypatch.setenv("IMGPIPE_KAFKA_BOOTSTRAP_SERVERS", servers)
    return servers


@pytest.fixture
def since() -> datetime:
    # Only this test's dead letters matter; the topic keeps every earlier one.
    return datetime.now(UTC) - timedelta(seconds=5)


def dead_letter_of(bootstrap: str, since: datetime, key: str, replay_count: int = 0) -> DeadLetter:
    """Wait until the message keyed `key` (replayed that often) is on the dead-letter topic."""
    reader = DeadLetters(RuntimeSettings(kafka_bootstrap_servers=bootstrap), timeout_seconds=30)

    def found() -> DeadLetter | None:
        listing = reader.select(Selection(origin=SUBMIT, since=since, limit=1000))
        return next(
            (e for e in listing.entries if e.key_text == key and e.replay_count == replay_count), None
        )

    return wait_until(found, 90, f"the dead letter of {key} (replay count {replay_count})", interval=0.5)


def read_at(bootstrap: str, topic: str, partition: int, offset: int, timeout: float = 30) -> Received:
    """The message at that position (a consumer without group, assigned exactly there)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in consumer.consume(num_messages=10, timeout=0.2):
                if message.error() is None and message.offset() == offset:
                    return Received.of(message)
        raise TimeoutError(f"nothing read at {topic}:{partition}:{offset} within {timeout} s")
    finally:
        consumer.close()


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["deadletters", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_replayed_copy(copy: Received, entry: DeadLetter, count: int) -> None:
    assert copy.value == MALFORMED
    assert copy.key == entry.key
    assert copy.header(REPLAYED_FROM_HEADER) == entry.id
    assert copy.header(REPLAY_COUNT_HEADER) == str(count)
    # A first attempt on its origin topic again: none of the runtime's bookkeeping travels along.
    for name in (DEAD_LETTER_REASON_HEADER, ORIGIN_TOPIC_HEADER, ATTEMPT_HEADER):
        assert copy.header(name) is None, name


@pytest.mark.timeout(300)
def test_a_malformed_submission_is_listed_shown_and_replayed_by_the_cli(
    bootstrap: str, since: datetime, capsys: pytest.CaptureFixture[str]
) -> None:
    key = f"dlq-cli-{uuid.uuid4().hex[:10]}"
    produce(bootstrap, SUBMIT, [(key, MALFORMED)])
    entry = dead_letter_of(bootstrap, since, key)

    code, out, _ = run_cli(capsys, "list", "--origin", "tasks-submit", "--since", "10m", "--limit", "1000")
    assert code == 0
    (line,) = [line for line in out.splitlines() if line.startswith(f"{entry.id} ")]
    assert SUBMIT in line and "imgpipe.ingest" in line and key in line and "poison message" in line
    assert line.split()[1].endswith("s") or line.split()[1].endswith("m")  # the age

    code, out, _ = run_cli(
        capsys, "list", "--json", "--reason", "INVALID SUBMISSION", "--since", since.isoformat()
    )
    assert code == 0
    (listed,) = [e for e in json.loads(out)["dead_letters"] if e["id"] == entry.id]
    assert listed["origin_topic"] == SUBMIT
    assert listed["group"] == "imgpipe.ingest"
    assert "poison message: invalid submission" in listed["reason"]
    assert 0 <= listed["age_seconds"] < 120
    assert listed["payload_bytes"] == len(MALFORMED)

    code, out, _ = run_cli(capsys, "show", entry.id)
    assert code == 0
    assert f"origin_topic:     {SUBMIT}" in out and f"key:              {key}" in out
    assert "imgpipe-dead-letter-reason: poison message" in out

    code, out, _ = run_cli(capsys, "replay", entry.id, "--json")
    assert code == 0, out
    (replayed,) = json.loads(out)["replayed"]
    assert (replayed["id"], replayed["topic"]) == (entry.id, SUBMIT)
    assert_replayed_copy(read_at(bootstrap, SUBMIT, replayed["partition"], replayed["offset"]), entry, 1)

    # Still malformed: ingest dead-letters the replayed copy again, and the count travels with it.
    again = dead_letter_of(bootstrap, since, key, replay_count=1)
    assert again.replayed_from == entry.id
    assert again.id != entry.id


def test_replay_refuses_an_unknown_origin_and_sends_nothing(
    bootstrap: str, since: datetime, capsys: pytest.CaptureFixture[str]
) -> None:
    key = f"dlq-orphan-{uuid.uuid4().hex[:10]}"
    produce(bootstrap, DEAD_LETTER, [(key, b"from nowhere")], headers={DEAD_LETTER_REASON_HEADER: "test"})
    reader = DeadLetters(RuntimeSettings(kafka_bootstrap_servers=bootstrap), timeout_seconds=30)
    orphan = wait_until(
        lambda: next(
            (e for e in reader.select(Selection(since=since, limit=1000)).entries if e.key_text == key), None
        ),
        30,
        "the orphan dead letter",
    )
    assert orphan.origin_topic is None

    code, _, err = run_cli(capsys, "replay", orphan.id, f"{DEAD_LETTER}:0:999999999")
    assert code == 1
    assert f"{orphan.id}: its origin is unknown" in err
    assert f"{DEAD_LETTER}:0:999999999: no dead letter" in err
    assert "nothing was replayed" in err

    code, _, err = run_cli(capsys, "show", "no-such-topic:0:1")
    assert code == 1
    assert "is not a dead-letter topic" in err


@pytest.mark.timeout(300)
def test_the_admin_api_lists_shows_and_replays_dead_letters(
    pipeline: LocalPipeline, bootstrap: str, since: datetime
) -> None:
    key = f"dlq-api-{uuid.uuid4().hex[:10]}"
    produce(bootstrap, SUBMIT, [(key, MALFORMED)])
    entry = dead_letter_of(bootstrap, since, key)
    admin = {"Authorization": f"Bearer {pipeline.state.admin_token}"}

    with httpx.Client(base_url=pipeline.api_url, timeout=60) as http:
        unauthenticated = http.get("/v1/admin/dead-letters")
        assert unauthenticated.status_code == 401
        assert unauthenticated.headers["content-type"].startswith("application/problem+json")
        assert unauthenticated.json()["code"] == "unauthenticated"
        assert http.get("/v1/admin/dead-letters", headers={"Authorization": "Bearer nope"}).status_code == 403
        assert http.post("/v1/admin/dead-letters:replay", json={"ids": [entry.id]}).status_code == 401

        params: dict[str, Any] = {"origin": SUBMIT, "since": since.isoformat(), "limit": 1000}
        listing = http.get("/v1/admin/dead-letters", params=params, headers=admin)
        assert listing.status_code == 200, listing.text
        (listed,) = [e for e in listing.json()["dead_letters"] if e["id"] == entry.id]
        assert listed["origin_topic"] == SUBMIT
        assert listed["group"] == "imgpipe.ingest"
        assert listed["key"] == key
        assert "poison message" in listed["reason"]
        assert 0 <= listed["age_seconds"] < 120

        detail = http.get(f"/v1/admin/dead-letters/{entry.id}", headers=admin)
        assert detail.status_code == 200, detail.text
        assert base64.b64decode(detail.json()["payload_base64"]) == MALFORMED
        assert detail.json()["headers"][ORIGIN_TOPIC_HEADER] == SUBMIT
        missing = http.get(f"/v1/admin/dead-letters/{DEAD_LETTER}:0:999999999", headers=admin)
        assert missing.status_code == 404 and missing.json()["code"] == "not_found"

        replay = http.post("/v1/admin/dead-letters:replay", json={"ids": [entry.id]}, headers=admin)
        assert replay.status_code == 200, replay.text
        (replayed,) = replay.json()["replayed"]
        assert (replayed["id"], replayed["topic"]) == (entry.id, SUBMIT)
        assert_replayed_copy(read_at(bootstrap, SUBMIT, replayed["partition"], replayed["offset"]), entry, 1)

        # By selection: the copy, dead-lettered again, goes back with its count raised.
        again = dead_letter_of(bootstrap, since, key, replay_count=1)
        assert again.dead_lettered_at is not None
        selection = {
            "origin": "tasks-submit",  # a registry key names its topic too
            "reason": "invalid submission",
            "since": again.dead_lettered_at.isoformat(),
        }
        by_selection = http.post("/v1/admin/dead-letters:replay", json=selection, headers=admin)
        assert by_selection.status_code == 200, by_selection.text
        mine = [r for r in by_selection.json()["replayed"] if r["id"] == again.id]
        assert len(mine) == 1
        assert_replayed_copy(read_at(bootstrap, SUBMIT, mine[0]["partition"], mine[0]["offset"]), again, 2)

        refused = http.post(
            "/v1/admin/dead-letters:replay", json={"ids": [f"{DEAD_LETTER}:0:999999999"]}, headers=admin
        )
        assert refused.status_code == 409 and refused.json()["code"] == "not_replayable"
        neither = http.post("/v1/admin/dead-letters:replay", json={}, headers=admin)
        assert neither.status_code == 422
