"""One callback URL's queue: its state and every transition, as pure functions.

The faust agent owns one `UrlQueue` per URL in a table and changes it only through `enqueue`,
`plan` and `settle`, so the state is always what the changelog says and a restarted worker resumes
exactly where the last one left off. Nothing here does I/O or reads a clock: the caller passes `now`
(wall-clock seconds, since the state outlives processes).

Lifecycle of a callback: a result is *queued*; `plan` groups queued results into *deliveries* (one
per result when immediate; up to batch_size when batched, flushed when full or when the oldest has
waited max_delay) and *starts* the due ones that the URL's circuit breaker, its in-flight cap and
its token bucket let through; the sender reports each send's outcome, which `settle` applies:
delivered, retry later (backoff with jitter, or Retry-After), or failed for good (dead letter).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from imgpipe.callback.backoff import (
    BreakerState,
    breaker_allows,
    breaker_half_open,
    breaker_record,
    retry_delay,
)
from imgpipe.callback.signing import webhook_id_for
from imgpipe.ratelimit import BucketState, take
from imgpipe.v1 import callback_pb2

# Task ids remembered per URL after their callback ended, so a result redelivered by Kafka after a
# crash is not sent again under a new batch (and a new webhook-id).
RECENT_TASKS_KEPT = 2000


@dataclass(frozen=True)
class Policy:
    """What applies to one URL now: its policy from the policy topic over the service defaults."""

    rate_per_second: float
    burst: int
    batch_size: int
    max_delay_seconds: float
    timeout_seconds: float
    mode_override: str | None  # "immediate" | "batched" | None (as each task asked)
    disabled: bool
    max_attempts: int
    backoff_base_seconds: float
    backoff_cap_seconds: float
    breaker_fail_max: int
    breaker_reset_seconds: float
    max_in_flight: int


@dataclass(frozen=True)
class Queued:
    """A finished task waiting for its callback: its TaskResult (serialized, base64 for JSON)."""

    task_id: str
    tenant_id: str
    result: str
    batched: bool
    queued_at: float
    replay_id: str = ""


@dataclass(frozen=True)
class Delivery:
    """One request to the URL (one result, or a batch), kept until it is delivered or given up."""

    webhook_id: str
    tenant_id: str
    items: tuple[Queued, ...]
    batched: bool
    attempts: int = 0  # sends started so far
    next_attempt_at: float = 0.0
    in_flight_since: float | None = None

    @property
    def task_ids(self) -> list[str]:
        return [item.task_id for item in self.items]


@dataclass(frozen=True)
class UrlQueue:
    queued: tuple[Queued, ...] = ()
    deliveries: tuple[Delivery, ...] = ()
    bucket: BucketState | None = None
    breaker: BreakerState = field(default_factory=BreakerState)
    disabled: bool = False  # the receiver answered 410 Gone
    recent_task_ids: tuple[str, ...] = ()

    @property
    def is_idle(self) -> bool:
        return not self.queued and not self.deliveries

    def knows(self, task_id: str, replay_id: str) -> bool:
        if replay_id:
            return any(q.replay_id == replay_id and q.task_id == task_id for q in self._all_items())
        return task_id in self.recent_task_ids or any(q.task_id == task_id for q in self._all_items())

    def _all_items(self) -> Iterable[Queued]:
        yield from self.queued
        for delivery in self.deliveries:
            yield from delivery.items


@dataclass(frozen=True)
class Ended:
    """A delivery that ended, or results that can never be sent (disabled URL): record and drop."""

    delivery: Delivery
    outcome: callback_pb2.CallbackOutcome.ValueType
    reason: str


@dataclass(frozen=True)
class Plan:
    queue: UrlQueue
    start: list[Delivery]  # send these now (already counted in the state as in flight)
    ended: list[Ended]  # results dropped because the URL is disabled
    wake_at: float | None  # when to plan again, if anything is waiting
    rate_limited: int = 0  # due deliveries the token bucket deferred


@dataclass(frozen=True)
class Settled:
    queue: UrlQueue
    outcome: callback_pb2.CallbackOutcome.ValueType | None  # None: a stale report, ignored
    next_attempt_at: float | None = None
    ended: Ended | None = None  # set when the delivery is done (delivered or given up)


def enqueue(queue: UrlQueue, item: Queued) -> UrlQueue:
    """Add a finished task, unless it is already queued or recently called back (a redelivery)."""
    if queue.knows(item.task_id, item.replay_id):
        return queue
    return replace(queue, queued=(*queue.queued, item))


def plan(queue: UrlQueue, policy: Policy, now: float, sending_here: set[str]) -> Plan:
    """Form deliveries from queued results and start those that may go now.

    `sending_here` holds the webhook ids this process is sending right now: a delivery the state
    says is in flight but that is not among them was lost with a crashed worker and is sent again
    (same webhook-id, so the receiver can drop the duplicate).
    """
    if policy.disabled or queue.disabled:
        return _drop_everything(queue, "callback URL disabled" if queue.disabled else "disabled by policy")
    deliveries = [
        replace(d, in_flight_since=None)
        if d.in_flight_since is not None and d.webhook_id not in sending_here
        else d
        for d in queue.deliveries
    ]
    queued, formed, wake_at = _form_deliveries(queue.queued, policy, now)
    deliveries += formed

    start: list[Delivery] = []
    bucket, breaker = queue.bucket, queue.breaker
    in_flight = sum(1 for d in deliveries if d.in_flight_since is not None)
    rate_limited = 0
    for index, delivery in enumerate(deliveries):
        if delivery.in_flight_since is not None:
            continue
        due_at = delivery.next_attempt_at
        if due_at > now:
            wake_at = _earliest(wake_at, due_at)
            continue
        if in_flight >= policy.max_in_flight:
            break  # the next outcome wakes the queue
        if not breaker_allows(breaker, now):
            wake_at = _earliest(wake_at, breaker.open_until)
            break
        if breaker_half_open(breaker, now) and in_flight > 0:
            break  # one trial request decides whether the circuit closes; its outcome wakes the queue
        bucket, wait = take(bucket, policy.rate_per_second, policy.burst, now)
        if wait > 0:
            rate_limited += 1
            wake_at = _earliest(wake_at, now + wait)
            break
        started = replace(delivery, attempts=delivery.attempts + 1, in_flight_since=now)
        deliveries[index] = started
        start.append(started)
        in_flight += 1
    return Plan(
        queue=replace(queue, queued=queued, deliveries=tuple(deliveries), bucket=bucket),
        start=start,
        ended=[],
        wake_at=wake_at,
        rate_limited=rate_limited,
    )


def settle(
    queue: UrlQueue,
    outcome: callback_pb2.DeliveryOutcome,
    policy: Policy,
    now: float,
    rng: random.Random | None = None,
) -> Settled:
    """Apply a send's outcome to the delivery it belongs to."""
    index = next(
        (
            i
            for i, d in enumerate(queue.deliveries)
            if d.webhook_id == outcome.webhook_id
            and d.attempts == outcome.attempt
            and d.in_flight_since is not None
        ),
        None,
    )
    if index is None:
        return Settled(queue, None)  # a duplicate or stale report (e.g. replayed after a restart)
    delivery = queue.deliveries[index]
    others = queue.deliveries[:index] + queue.deliveries[index + 1 :]
    verdict = outcome.verdict
    success = verdict == callback_pb2.DELIVERY_VERDICT_DELIVERED
    breaker = breaker_record(
        queue.breaker,
        success=success or verdict == callback_pb2.DELIVERY_VERDICT_REFUSED,  # not the receiver's fault
        now=now,
        fail_max=policy.breaker_fail_max,
        reset_seconds=policy.breaker_reset_seconds,
    )
    if success:
        return _finish(queue, others, breaker, delivery, callback_pb2.CALLBACK_OUTCOME_DELIVERED, "")
    if verdict == callback_pb2.DELIVERY_VERDICT_GONE:
        done = _finish(queue, others, breaker, delivery, callback_pb2.CALLBACK_OUTCOME_DISABLED, "410 Gone")
        return replace(done, queue=replace(done.queue, disabled=True))
    if verdict == callback_pb2.DELIVERY_VERDICT_REFUSED or delivery.attempts >= policy.max_attempts:
        reason = outcome.error or f"answered {outcome.status_code}"
        if verdict != callback_pb2.DELIVERY_VERDICT_REFUSED:
            reason = f"gave up after {delivery.attempts} attempts: {reason}"
        return _finish(queue, others, breaker, delivery, callback_pb2.CALLBACK_OUTCOME_FAILED, reason)
    backoff = retry_delay(
        delivery.attempts,
        base_seconds=policy.backoff_base_seconds,
        cap_seconds=policy.backoff_cap_seconds,
        rng=rng,
    )
    next_at = now + max(backoff, outcome.retry_after_ms / 1000)
    retrying = replace(delivery, in_flight_since=None, next_attempt_at=next_at)
    return Settled(
        replace(queue, deliveries=(*others[:index], retrying, *others[index:]), breaker=breaker),
        callback_pb2.CALLBACK_OUTCOME_RETRYING,
        next_attempt_at=next_at,
    )


def _finish(
    queue: UrlQueue,
    others: tuple[Delivery, ...],
    breaker: BreakerState,
    delivery: Delivery,
    outcome: callback_pb2.CallbackOutcome.ValueType,
    reason: str,
) -> Settled:
    recent = (*queue.recent_task_ids, *delivery.task_ids)[-RECENT_TASKS_KEPT:]
    ended = Ended(delivery, outcome, reason)
    return Settled(
        replace(queue, deliveries=others, breaker=breaker, recent_task_ids=recent), outcome, ended=ended
    )


def _form_deliveries(
    queued: tuple[Queued, ...], policy: Policy, now: float
) -> tuple[tuple[Queued, ...], list[Delivery], float | None]:
    """Deliveries to add, the results still waiting, and when the oldest batch is due."""
    formed: list[Delivery] = []
    batched: list[Queued] = []
    for item in queued:
        as_batch = item.batched if policy.mode_override is None else policy.mode_override == "batched"
        if as_batch:
            batched.append(item)
        else:
            formed.append(_delivery([item], batched=False))
    while len(batched) >= policy.batch_size:
        formed.append(_delivery(batched[: policy.batch_size], batched=True))
        batched = batched[policy.batch_size :]
    wake_at = None
    if batched:
        due_at = min(item.queued_at for item in batched) + policy.max_delay_seconds
        if due_at <= now:
            formed.append(_delivery(batched, batched=True))
            batched = []
        else:
            wake_at = due_at
    return tuple(batched), formed, wake_at


def _delivery(items: list[Queued], *, batched: bool) -> Delivery:
    webhook_id = webhook_id_for([item.task_id for item in items], items[0].replay_id)
    return Delivery(webhook_id=webhook_id, tenant_id=items[0].tenant_id, items=tuple(items), batched=batched)


def _drop_everything(queue: UrlQueue, reason: str) -> Plan:
    pending = [d for d in queue.deliveries if d.in_flight_since is None]
    pending += [_delivery([item], batched=False) for item in queue.queued]
    ended = [Ended(d, callback_pb2.CALLBACK_OUTCOME_DISABLED, reason) for d in pending]
    kept = tuple(d for d in queue.deliveries if d.in_flight_since is not None)
    return Plan(replace(queue, queued=(), deliveries=kept), start=[], ended=ended, wake_at=None)


def _earliest(current: float | None, candidate: float) -> float:
    return candidate if current is None else min(current, candidate)


# -- storage: the table keeps queues as JSON ---------------------------------------------------


def to_json(queue: UrlQueue) -> dict[str, Any]:
    return {
        "queued": [_item_json(q) for q in queue.queued],
        "deliveries": [
            {
                "webhook_id": d.webhook_id,
                "tenant_id": d.tenant_id,
                "items": [_item_json(q) for q in d.items],
                "batched": d.batched,
                "attempts": d.attempts,
                "next_attempt_at": d.next_attempt_at,
                "in_flight_since": d.in_flight_since,
            }
            for d in queue.deliveries
        ],
        "bucket": None if queue.bucket is None else [queue.bucket.tokens, queue.bucket.updated_at],
        "breaker": queue.breaker.to_dict(),
        "disabled": queue.disabled,
        "recent_task_ids": list(queue.recent_task_ids),
    }


def from_json(data: dict[str, Any] | None) -> UrlQueue:
    if not data:
        return UrlQueue()
    bucket = data.get("bucket")
    return UrlQueue(
        queued=tuple(Queued(**q) for q in data["queued"]),
        deliveries=tuple(
            Delivery(**{**d, "items": tuple(Queued(**q) for q in d["items"])}) for d in data["deliveries"]
        ),
        bucket=None if bucket is None else BucketState(tokens=bucket[0], updated_at=bucket[1]),
        breaker=BreakerState.from_dict(data["breaker"]),
        disabled=data["disabled"],
        recent_task_ids=tuple(data["recent_task_ids"]),
    )


def _item_json(item: Queued) -> dict[str, Any]:
    return {
        "task_id": item.task_id,
        "tenant_id": item.tenant_id,
        "result": item.result,
        "batched": item.batched,
        "queued_at": item.queued_at,
        "replay_id": item.replay_id,
    }
