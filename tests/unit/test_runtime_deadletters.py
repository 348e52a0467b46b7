from datetime import UTC, datetime, timedelta

import pytest

from imgpipe.cli import main
from imgpipe.contracts.registry import TopicKey, default_registry
from imgpipe.runtime.commands import format_age
from imgpipe.runtime.deadletters import (
    DeadLetter,
    DeadLetterNotFound,
    DeadLetters,
    InvalidDeadLetterId,
    ReplayRefused,
    Selection,
    parse_since,
)
from imgpipe.runtime.kafka import (
    ATTEMPT_HEADER,
    DEAD_LETTER_GROUP_HEADER,
    DEAD_LETTER_REASON_HEADER,
    ORIGIN_OFFSET_HEADER,
    ORIGIN_PARTITION_HEADER,
    ORIGIN_TOPIC_HEADER,
    REPLAY_COUNT_HEADER,
    REPLAYED_FROM_HEADER,
)
from imgpipe.runtime.settings import RuntimeSettings

pytestmark = pytest.mark.unit
REGISTRY = default_registry()
DEAD_LETTER = REGISTRY.name(TopicKey.DEAD_LETTER)
SUBMIT = REGISTRY.name(TopicKey.SUBMIT)
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def dead_letter(headers: dict[str, bytes], offset: int = 7, at: datetime = NOW) -> DeadLetter:
    return DeadLetter(
        topic=DEAD_LETTER,
        partition=0,
        offset=offset,
        timestamp_ms=int(at.timestamp() * 1000),
        key=b"task-1",
        value=b"payload",
        headers=headers,
    )


def from_submit(**extra: bytes) -> dict[str, bytes]:
    return {
        ORIGIN_TOPIC_HEADER: SUBMIT.encode(),
        ORIGIN_PARTITION_HEADER: b"2",
        ORIGIN_OFFSET_HEADER: b"41",
        DEAD_LETTER_REASON_HEADER: b"poison message: invalid submission: no prompt",
        DEAD_LETTER_GROUP_HEADER: b"imgpipe.ingest",
        ATTEMPT_HEADER: b"4",
        "traceparent": b"00-abc-def-01",
        **extra,
    }


def test_a_dead_letter_reads_its_reason_origin_group_and_age_from_headers() -> None:
    entry = dead_letter(from_submit(), at=NOW - timedelta(minutes=3))

    summary = entry.summary(NOW)
    assert summary["id"] == f"{DEAD_LETTER}:0:7"
    assert summary["origin_topic"] == SUBMIT
    assert (summary["origin_partition"], summary["origin_offset"]) == (2, 41)
    assert summary["group"] == "imgpipe.ingest"
    assert summary["age_seconds"] == 180
    assert (summary["key"], summary["payload_bytes"], summary["replay_count"]) == ("task-1", 7, 0)
    assert format_age(summary["age_seconds"]) == "3m"


def test_a_replay_starts_over_keeping_the_message_headers_and_counting_replays() -> None:
    first = dead_letter(from_submit()).replay_headers()
    assert first == {
        "traceparent": b"00-abc-def-01",
        REPLAYED_FROM_HEADER: f"{DEAD_LETTER}:0:7".encode(),
        REPLAY_COUNT_HEADER: b"1",
    }
    # A replayed message dead-lettered again carries the count; the next replay raises it.
    again = dead_letter(from_submit(**first), offset=9)
    assert again.replay_count == 1
    assert again.replay_headers()[REPLAY_COUNT_HEADER] == b"2"
    assert again.replay_headers()[REPLAYED_FROM_HEADER] == f"{DEAD_LETTER}:0:9".encode()


def test_a_selection_matches_origin_reason_substring_and_time() -> None:
    entry = dead_letter(from_submit(), at=NOW)
    assert Selection().matches(entry)
    assert Selection(origin=SUBMIT, reason="INVALID submission", since=NOW).matches(entry)
    assert not Selection(origin=REGISTRY.name(TopicKey.DETECT)).matches(entry)
    assert not Selection(reason="retries exhausted").matches(entry)
    assert not Selection(since=NOW + timedelta(seconds=1)).matches(entry)


def test_since_is_a_duration_ago_or_an_iso_time() -> None:
    assert parse_since("30m", NOW) == NOW - timedelta(minutes=30)
    assert parse_since("2d", NOW) == NOW - timedelta(days=2)
    assert parse_since("2026-02-28T10:00:00+01:00") == datetime(2026, 2, 28, 9, 0, tzinfo=UTC)
    assert parse_since("2026-02-28T10:00:00") == datetime(2026, 2, 28, 10, 0, tzinfo=UTC)
    with pytest.raises(ValueError, match="neither a duration"):
        parse_since("yesterday")


def test_ids_name_a_position_on_a_dead_letter_topic() -> None:
    dead_letters = DeadLetters(RuntimeSettings())
    assert dead_letters.parse_id(f"{DEAD_LETTER}:0:12") == (DEAD_LETTER, 0, 12)
    with pytest.raises(DeadLetterNotFound, match="not a dead-letter topic"):
        dead_letters.parse_id(f"{SUBMIT}:0:12")
    for bad in ("", DEAD_LETTER, f"{DEAD_LETTER}:0", f"{DEAD_LETTER}:x:1", f"{DEAD_LETTER}:0:-1"):
        with pytest.raises(InvalidDeadLetterId):
            dead_letters.parse_id(bad)
    assert dead_letters.resolve_origin("tasks-submit") == SUBMIT
    assert dead_letters.resolve_origin(SUBMIT) == SUBMIT


@pytest.mark.parametrize(
    ("origin", "why"),
    [
        (None, "origin is unknown"),
        ("imgpipe.somewhere.else.v1", "not a registered topic"),
        (REGISTRY.name(TopicKey.RETRY_1M), "dead-letter or retry topic"),
        (DEAD_LETTER, "dead-letter or retry topic"),
    ],
)
def test_a_replay_refuses_entries_without_a_known_origin_before_sending_anything(
    origin: str | None, why: str
) -> None:
    headers = from_submit()
    del headers[ORIGIN_TOPIC_HEADER]
    if origin is not None:
        headers[ORIGIN_TOPIC_HEADER] = origin.encode()
    fine, bad = dead_letter(from_submit(), offset=1), dead_letter(headers, offset=2)

    with pytest.raises(ReplayRefused) as refused:
        DeadLetters(RuntimeSettings())._replay([fine, bad], {}, truncated=False)  # no producer is made

    assert list(refused.value.refused) == [bad.id]
    assert why in refused.value.refused[bad.id]


@pytest.mark.parametrize(
    "argv",
    [
        ["deadletters", "replay"],
        ["deadletters", "replay", f"{DEAD_LETTER}:0:1", "--origin", SUBMIT],
        ["deadletters", "replay", f"{DEAD_LETTER}:0:1", "--reason", "poison"],
    ],
)
def test_replay_takes_either_ids_or_an_origin(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "deadletters replay:" in capsys.readouterr().err
