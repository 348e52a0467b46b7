"""One callback URL's queue: its state and every transition, as pure functions.

The faust agent owns one `UrlQueue` per URL in a table and changes it only through `enqueue`,
`plan` and `settle`, so the state is always what the changelog says and a restarted worker resumes
exactly where the last one left off. Nothing here does I/O or reads a clock: the caller passes `now`
(the timestamp of the event being handled, in wall-clock seconds: the state outlives processes, and
an event handled again after a crash decides the same).

A URL's state stays small however long its backlog: the queued results themselves are stored apart
(keyed by URL and sequence number) and the caller reads them through `peek`; the state
holds the sequence range and the open deliveries, at most `max_in_flight` of them, each naming its
results by sequence number. So a receiver that is down while thousands of results pile up costs
the same per event as any other URL.

Lifecycle of a callback: a result is *queued*; `plan` groups queued results into *deliveries* (one
per result when immediate; up to batch_size when batched, flushed when full or when the oldest has
waited max_delay) and *starts* the due ones that the URL's circuit breaker, its in-flight cap and
its token bucket let through; the sender reports each send's outcome, which `settle` applies:
delivered, retry later (backoff with jitter, or Retry-After), or failed for good (dead letter).
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Callable
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

log = logging.getLogger(__name__)

# Task ids remembered per URL after their callback ended, so a result redelivered by Kafka after a
# crash (offsets are committed every few seconds) is not sent again under a new batch and webhook-id.
RECENT_TASKS_KEPT = 200


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
    # W3C trace context the result arrived in, so its delivery continues the task's trace (empty:
    # none, or an item queued before this field existed).
    traceparent: str = ""


@dataclass(frozen=True)
class Delivery:
    """One request to the URL (one result, or a batch), kept until it is delivered or given up."""

    webhook_id: str
    tenant_id: str
    seqs: tuple[int, ...]  # the results' keys in the backlog
    task_ids: tuple[str, ...]
    batched: bool
    attempts: int = 0  # sends started so far
    next_attempt_at: float = 0.0
    in_flight_since: float | None = None


@dataclass(frozen=True)
class UrlQueue:
    head: int = 0  # sequence number of the oldest result not yet in a delivery
    tail: int = 0  # sequence number the next queued result gets
    deliveries: tuple[Delivery, ...] = ()  # open: in flight or waiting for a retry
    bucket: BucketState | None = None
    breaker: BreakerState = field(default_factory=BreakerState)
    disabled: bool = False  # the receiver answered 410 Gone
    # Recently ended task ids, so a result Kafka redelivers after a crash is not sent again.
    recent_task_ids: tuple[str, ...] = ()

    @property
    def is_idle(self) -> bool:
        return self.head == self.tail and not self.deliveries

    @property
    def backlog(self) -> int:
        return self.tail - self.head


Peek = Callable[[int], "Queued | None"]


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


def is_known(queue: UrlQueue, task_id: str) -> bool:
    """Whether a task's callback is open or recently ended (a result redelivered after a crash)."""
    return task_id in queue.recent_task_ids or any(task_id in d.task_ids for d in queue.deliveries)


def enqueue(queue: UrlQueue) -> tuple[UrlQueue, int]:
    """Take the next sequence number; the caller stores the result in the backlog under it.
    (The caller checks `is_known` and the backlog's index of queued tasks first.)"""
    return replace(queue, tail=queue.tail + 1), queue.tail


def restore(queue: UrlQueue, seq: int) -> UrlQueue:
    """Count in a result the backlog holds under `seq` although the state lost it (the state is
    written after the result; a crash between the two keeps only the result)."""
    return replace(queue, tail=max(queue.tail, seq + 1))


def plan(queue: UrlQueue, policy: Policy, now: float, sending_here: set[str], peek: Peek) -> Plan:
    """Open deliveries from the backlog and start those that may go now.

    `sending_here` holds the webhook ids this process is sending right now: a delivery the state
    says is in flight but that is not among them was lost with a crashed worker and is sent again
    (same webhook-id, so the receiver can drop the duplicate).
    """
    if policy.disabled or queue.disabled:
        return _drop_everything(
            queue, "callback URL disabled" if queue.disabled else "disabled by policy", peek
        )
    deliveries = [
        replace(d, in_flight_since=None)
        if d.in_flight_since is not None and d.webhook_id not in sending_here
        else d
        for d in queue.deliveries
    ]
    head, formed, wake_at = _open_deliveries(queue, policy, now, len(deliveries), peek)
    deliveries += formed

    start: list[Delivery] = []
    bucket, breaker = queue.bucket, queue.breaker
    in_flight = sum(1 for d in deliveries if d.in_flight_since is not None)
    rate_limited = 0
    for index, delivery in enumerate(deliveries):
        if delivery.in_flight_since is not None:
            continue
        if delivery.next_attempt_at > now:
            wake_at = _earliest(wake_at, delivery.next_attempt_at)
            continue
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
        queue=replace(queue, head=head, deliveries=tuple(deliveries), bucket=bucket),
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
    # An open circuit holds every delivery of the URL until it resets: that, not the backoff, is
    # when the next try really happens (and what the task's attempts show).
    next_at = max(now + max(backoff, outcome.retry_after_ms / 1000), breaker.open_until)
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


def _open_deliveries(
    queue: UrlQueue, policy: Policy, now: float, open_count: int, peek: Peek
) -> tuple[int, list[Delivery], float | None]:
    """Deliveries opened from the backlog's head while fewer than max_in_flight are open; the new
    head, and when a waiting partial batch is due."""
    head, formed = queue.head, list[Delivery]()
    while head < queue.tail and open_count + len(formed) < policy.max_in_flight:
        first = peek(head)
        if first is None:  # lost from the backlog (cannot happen unless tables diverge): skip it
            head += 1
            continue
        if not _batched(first, policy):
            formed.append(_delivery([(head, first)], batched=False))
            head += 1
            continue
        batch = [(head, first)]
        while len(batch) < policy.batch_size and head + len(batch) < queue.tail:
            following = peek(head + len(batch))
            if following is None or not _batched(following, policy):
                break
            batch.append((head + len(batch), following))
        full = len(batch) == policy.batch_size or head + len(batch) < queue.tail
        due_at = first.queued_at + policy.max_delay_seconds
        if not full and due_at > now:
            return head, formed, due_at  # a partial batch waits for more results or its max delay
        formed.append(_delivery(batch, batched=True))
        head += len(batch)
    return head, formed, None


def _batched(item: Queued, policy: Policy) -> bool:
    return item.batched if policy.mode_override is None else policy.mode_override == "batched"


def _delivery(items: list[tuple[int, Queued]], *, batched: bool) -> Delivery:
    task_ids = tuple(item.task_id for _, item in items)
    return Delivery(
        webhook_id=webhook_id_for(task_ids, items[0][1].replay_id),
        tenant_id=items[0][1].tenant_id,
        seqs=tuple(seq for seq, _ in items),
        task_ids=task_ids,
        batched=batched,
    )


def _drop_everything(queue: UrlQueue, reason: str, peek: Peek) -> Plan:
    pending = [d for d in queue.deliveries if d.in_flight_since is None]
    for seq in range(queue.head, queue.tail):
        item = peek(seq)
        if item is not None:
            pending.append(_delivery([(seq, item)], batched=False))
    ended = [Ended(d, callback_pb2.CALLBACK_OUTCOME_DISABLED, reason) for d in pending]
    kept = tuple(d for d in queue.deliveries if d.in_flight_since is not None)
    return Plan(replace(queue, head=queue.tail, deliveries=kept), start=[], ended=ended, wake_at=None)


def _earliest(current: float | None, candidate: float) -> float:
    return candidate if current is None else min(current, candidate)


# -- storage: the tables keep queues and backlog items as JSON ---------------------------------


# Bumped when the stored layout changes; see from_json.
STATE_VERSION = 2


def to_json(queue: UrlQueue) -> dict[str, Any]:
    return {
        "v": STATE_VERSION,
        "head": queue.head,
        "tail": queue.tail,
        "deliveries": [dataclasses.asdict(d) for d in queue.deliveries],
        "bucket": None if queue.bucket is None else [queue.bucket.tokens, queue.bucket.updated_at],
        "breaker": queue.breaker.to_dict(),
        "disabled": queue.disabled,
        "recent_task_ids": list(queue.recent_task_ids),
    }


def from_json(data: dict[str, Any] | None) -> UrlQueue:
    if not data:
        return UrlQueue()
    if data.get("v") != STATE_VERSION:
        # Only pre-release layouts predate the version field; nothing released needs migrating.
        log.warning("ignoring a URL queue stored in an unknown layout (version %s)", data.get("v"))
        return UrlQueue()
    bucket = data.get("bucket")
    return UrlQueue(
        head=data["head"],
        tail=data["tail"],
        deliveries=tuple(
            Delivery(**{**d, "seqs": tuple(d["seqs"]), "task_ids": tuple(d["task_ids"])})
            for d in data["deliveries"]
        ),
        bucket=None if bucket is None else BucketState(tokens=bucket[0], updated_at=bucket[1]),
        breaker=BreakerState.from_dict(data["breaker"]),
        disabled=data["disabled"],
        recent_task_ids=tuple(data["recent_task_ids"]),
    )


def item_to_json(item: Queued) -> dict[str, Any]:
    return dataclasses.asdict(item)


def item_from_json(data: dict[str, Any] | None) -> Queued | None:
    return None if data is None else Queued(**data)
