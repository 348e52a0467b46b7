"""The per-URL callback queue's transitions: batching, rate limits, retries, breaker, crash recovery."""

from __future__ import annotations

import base64
import json
import random
from dataclasses import replace

import pytest

from imgpipe.callback.url_queue import (
    Plan,
    Policy,
    Queued,
    UrlQueue,
    enqueue,
    from_json,
    is_known,
    restore,
    settle,
    to_json,
)
from imgpipe.callback.url_queue import plan as plan_with_peek
from imgpipe.v1 import callback_pb2, result_pb2

pytestmark = pytest.mark.unit

POLICY = Policy(
    rate_per_second=2.0,
    burst=3,
    batch_size=3,
    max_delay_seconds=2.0,
    timeout_seconds=5.0,
    mode_override=None,
    disabled=False,
    max_attempts=3,
    backoff_base_seconds=1.0,
    backoff_cap_seconds=60.0,
    breaker_fail_max=2,
    breaker_reset_seconds=30.0,
    max_in_flight=10,
)


def item(task_id: str, *, batched: bool = False, at: float = 0.0, replay_id: str = "") -> Queued:
    result = base64.b64encode(result_pb2.TaskResult(task_id=task_id).SerializeToString()).decode()
    return Queued(task_id, "tenant", result, batched, at, replay_id)


def outcome(
    webhook_id: str, attempt: int, verdict: callback_pb2.DeliveryVerdict.ValueType, retry_after_ms: int = 0
) -> callback_pb2.DeliveryOutcome:
    return callback_pb2.DeliveryOutcome(
        webhook_id=webhook_id,
        attempt=attempt,
        verdict=verdict,
        status_code=500,
        retry_after_ms=retry_after_ms,
    )


class Backlog(dict[int, Queued]):
    """The backlog table, as a dict from sequence number to result."""


BACKLOG = Backlog()


def queue_of(*items: Queued) -> UrlQueue:
    """A fresh URL queue holding `items` (the module's BACKLOG holds the results themselves)."""
    BACKLOG.clear()
    queue = UrlQueue()
    for queued in items:
        queue, seq = enqueue(queue)
        BACKLOG[seq] = queued
    return queue


def plan(queue: UrlQueue, policy: Policy, now: float, sending_here: set[str]) -> Plan:
    return plan_with_peek(queue, policy, now, sending_here, BACKLOG.get)


def test_immediate_results_go_one_request_each_within_the_burst() -> None:
    planned = plan(queue_of(*(item(f"t{i}") for i in range(5))), POLICY, now=100.0, sending_here=set())

    assert [d.task_ids for d in planned.start] == [("t0",), ("t1",), ("t2",)]  # burst 3
    assert planned.rate_limited == 1
    assert planned.wake_at == pytest.approx(100.5)  # one token every 0.5 s
    assert all(d.attempts == 1 and d.in_flight_since == 100.0 for d in planned.start)


def test_the_bucket_never_lets_more_than_rate_plus_burst_through_in_a_second() -> None:
    queue, sent = queue_of(*(item(f"t{i}") for i in range(50))), []
    now = 0.0
    while now < 10.0:
        planned = plan(queue, POLICY, now, sending_here=set())
        sent += [now] * len(planned.start)
        queue = planned.queue
        for delivery in planned.start:  # answered at once
            queue = settle(
                queue, outcome(delivery.webhook_id, 1, callback_pb2.DELIVERY_VERDICT_DELIVERED), POLICY, now
            ).queue
        now += 0.05
    for start in sent:
        in_window = [t for t in sent if start <= t < start + 1.0]
        assert len(in_window) <= POLICY.rate_per_second + POLICY.burst


def test_batches_flush_when_full_or_when_the_oldest_waited_max_delay() -> None:
    queue = queue_of(*(item(f"t{i}", batched=True, at=10.0) for i in range(4)))

    planned = plan(queue, POLICY, now=10.0, sending_here=set())
    assert [d.task_ids for d in planned.start] == [("t0", "t1", "t2")]  # a full batch at once
    assert planned.wake_at == pytest.approx(12.0)  # the partial one waits for max delay

    later = plan(planned.queue, POLICY, now=12.0, sending_here={planned.start[0].webhook_id})
    assert [d.task_ids for d in later.start] == [("t3",)]
    assert later.start[0].batched


def test_a_policy_mode_override_batches_immediate_results() -> None:
    policy = replace(POLICY, mode_override="batched")
    planned = plan(queue_of(item("a", at=1.0), item("b", at=1.0)), policy, now=1.0, sending_here=set())
    assert planned.start == [] and planned.wake_at == pytest.approx(3.0)


def test_retries_back_off_honour_retry_after_and_give_up_after_max_attempts() -> None:
    planned = plan(queue_of(item("t")), POLICY, now=0.0, sending_here=set())
    delivery = planned.start[0]

    first = settle(
        planned.queue,
        outcome(delivery.webhook_id, 1, callback_pb2.DELIVERY_VERDICT_RETRY, 30_000),
        POLICY,
        0.0,
    )
    assert first.outcome == callback_pb2.CALLBACK_OUTCOME_RETRYING
    assert first.next_attempt_at == pytest.approx(30.0)  # Retry-After beats the shorter backoff

    assert plan(first.queue, POLICY, now=29.0, sending_here=set()).start == []
    second = plan(first.queue, POLICY, now=30.0, sending_here=set())
    assert second.start[0].attempts == 2 and second.start[0].webhook_id == delivery.webhook_id

    queue = settle(
        second.queue, outcome(delivery.webhook_id, 2, callback_pb2.DELIVERY_VERDICT_RETRY), POLICY, 30.0
    ).queue
    third = plan(queue, POLICY, now=1000.0, sending_here=set())
    final = settle(
        third.queue, outcome(delivery.webhook_id, 3, callback_pb2.DELIVERY_VERDICT_RETRY), POLICY, 1000.0
    )
    assert final.outcome == callback_pb2.CALLBACK_OUTCOME_FAILED
    assert final.ended is not None and "gave up after 3 attempts" in final.ended.reason
    assert final.queue.is_idle


def test_consecutive_failures_open_the_breaker_and_hold_the_url() -> None:
    rng = random.Random(1)
    queue = queue_of(item("a"), item("b"), item("c"))
    planned = plan(queue, replace(POLICY, max_in_flight=2), now=0.0, sending_here=set())
    assert len(planned.start) == 2
    queue = planned.queue
    for delivery in planned.start:
        queue = settle(
            queue, outcome(delivery.webhook_id, 1, callback_pb2.DELIVERY_VERDICT_RETRY), POLICY, 0.0, rng
        ).queue

    held = plan(queue, POLICY, now=5.0, sending_here=set())
    assert held.start == []
    assert held.wake_at == pytest.approx(30.0)  # the circuit's reset time


def test_a_retry_behind_an_open_breaker_states_when_the_circuit_lets_it_go() -> None:
    rng = random.Random(1)
    queue = queue_of(item("a"), item("b"))
    planned = plan(queue, replace(POLICY, max_in_flight=2), now=0.0, sending_here=set())
    first, second = planned.start
    queue = settle(
        planned.queue, outcome(first.webhook_id, 1, callback_pb2.DELIVERY_VERDICT_RETRY), POLICY, 0.0, rng
    )
    assert queue.next_attempt_at is not None and queue.next_attempt_at < 30.0  # closed: the backoff decides
    opened = settle(
        queue.queue, outcome(second.webhook_id, 1, callback_pb2.DELIVERY_VERDICT_RETRY), POLICY, 1.0, rng
    )
    assert opened.queue.breaker.open_until == pytest.approx(31.0)
    assert opened.next_attempt_at == pytest.approx(31.0)  # backoff ~1-2 s, but the circuit is open until 31
    assert plan(opened.queue, POLICY, now=30.9, sending_here=set()).start == []
    assert [d.webhook_id for d in plan(opened.queue, POLICY, now=31.0, sending_here=set()).start]


def test_410_disables_the_url_and_drops_what_waits() -> None:
    planned = plan(queue_of(item("a"), item("b"), item("c"), item("d")), POLICY, now=0.0, sending_here=set())
    gone = settle(
        planned.queue,
        outcome(planned.start[0].webhook_id, 1, callback_pb2.DELIVERY_VERDICT_GONE),
        POLICY,
        0.0,
    )
    assert gone.outcome == callback_pb2.CALLBACK_OUTCOME_DISABLED and gone.queue.disabled

    after = plan(gone.queue, POLICY, now=1.0, sending_here={d.webhook_id for d in planned.start[1:]})
    assert after.start == []
    assert [e.delivery.task_ids for e in after.ended] == [("d",)]
    assert all(e.outcome == callback_pb2.CALLBACK_OUTCOME_DISABLED for e in after.ended)


def test_a_send_lost_with_a_crashed_worker_is_sent_again_with_the_same_webhook_id() -> None:
    planned = plan(queue_of(item("t")), POLICY, now=0.0, sending_here=set())
    restored = from_json(to_json(planned.queue))  # what the changelog gives the next worker

    again = plan(restored, POLICY, now=1.0, sending_here=set())
    assert [d.webhook_id for d in again.start] == [planned.start[0].webhook_id]
    assert again.start[0].attempts == 2


def test_stale_or_duplicate_outcomes_change_nothing() -> None:
    planned = plan(queue_of(item("t")), POLICY, now=0.0, sending_here=set())
    webhook_id = planned.start[0].webhook_id
    delivered = settle(
        planned.queue, outcome(webhook_id, 1, callback_pb2.DELIVERY_VERDICT_DELIVERED), POLICY, 0.0
    )
    again = settle(
        delivered.queue, outcome(webhook_id, 1, callback_pb2.DELIVERY_VERDICT_DELIVERED), POLICY, 0.0
    )
    assert again.outcome is None and again.queue == delivered.queue


def test_a_result_redelivered_after_its_callback_is_not_sent_twice_but_a_replay_is() -> None:
    planned = plan(queue_of(item("t")), POLICY, now=0.0, sending_here=set())
    done = settle(
        planned.queue,
        outcome(planned.start[0].webhook_id, 1, callback_pb2.DELIVERY_VERDICT_DELIVERED),
        POLICY,
        0.0,
    )

    assert is_known(done.queue, "t")  # the agent drops a redelivered result for it
    replayed, seq = enqueue(done.queue)  # a replay is a new callback of the same task
    BACKLOG[seq] = item("t", replay_id="r1")
    resent = plan(replayed, POLICY, now=1.0, sending_here=set()).start
    assert len(resent) == 1 and resent[0].webhook_id != planned.start[0].webhook_id


def test_a_disabled_policy_drops_results_as_disabled() -> None:
    planned = plan(queue_of(item("t")), replace(POLICY, disabled=True), now=0.0, sending_here=set())
    assert planned.start == [] and [e.outcome for e in planned.ended] == [
        callback_pb2.CALLBACK_OUTCOME_DISABLED
    ]
    assert planned.queue.is_idle


def test_state_survives_its_json_round_trip() -> None:
    planned = plan(queue_of(item("a"), item("b", batched=True, at=3.0)), POLICY, now=3.0, sending_here=set())
    assert from_json(to_json(planned.queue)) == planned.queue


def test_a_deep_backlog_leaves_the_url_state_small() -> None:
    queue = queue_of(*(item(f"task-{i:05d}") for i in range(5000)))
    planned = plan(queue, POLICY, now=0.0, sending_here=set())

    assert len(planned.queue.deliveries) == POLICY.max_in_flight  # the rest waits in the backlog
    assert planned.queue.backlog == 5000 - POLICY.max_in_flight
    assert len(json.dumps(to_json(planned.queue))) < 5000  # what every event rewrites


def test_restore_counts_in_a_result_the_state_lost_and_never_moves_the_tail_back() -> None:
    queue, seq = enqueue(UrlQueue())
    assert restore(UrlQueue(), seq) == queue  # the crash kept the result but not the state
    assert restore(queue, seq) == queue  # the state was kept too: nothing to do
