"""The old batched callback sender (the old system's tasks_batch.py), rebuilt on Redis as it was.

Workers RPUSH each finished task's callback onto one Redis list. One scheduler drains it: it takes
the Redis lock (so only one drainer runs, however many are started), moves due retries back onto
the list, re-queues callbacks stuck in flight, takes the whole list, groups the batched callbacks
per URL (one JSON array per URL; a non-batched entry travels alone), and sends the requests one
every 200 ms for the whole system. A failed request is retried twice, 30 s and 60 s later; then
its callbacks are given up (`failed`).

Redis keys: the list `callbacks:queue`; callbacks taken but not finished in the hash
`callbacks:inflight` (id -> entry) with their take time in the sorted set `callbacks:inflight:since`;
retries in the sorted set `callbacks:retry` (entry -> due time); the lock `callbacks:lock`.

Run as its own process (`python -m bench.baselines.celery_redis.sender --redis-url ...`), or use
`OldCallbackSender` directly: `enqueue(url, payload)`, then `run_until_drained()`.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, cast

import httpx
import redis
from redis.client import Pipeline
from redis.exceptions import LockError
from redis.lock import Lock
from sqlalchemy.orm import Session, sessionmaker

from imgpipe.store.db import make_engine, make_sessions
from imgpipe.store.models import CallbackStatus, Task, TaskState

from . import records

log = logging.getLogger(__name__)

# The old system's timing. Tests may pass other values through SenderTiming; nothing else should.
SEND_INTERVAL_SECONDS: Final = 0.2  # one request every 200 ms, for the whole system
RETRY_DELAYS_SECONDS: Final = (30.0, 60.0)  # two retries: 30 s, then 60 s after a failed request
STUCK_AFTER_SECONDS: Final = 300.0  # taken but not finished for 5 minutes: the sweeper re-queues it
REQUEST_TIMEOUT_SECONDS: Final = 10.0
# The lock outlives a crashed drainer by at most this; a live one renews it before every request.
LOCK_TIMEOUT_SECONDS: Final = 60.0

QUEUE_KEY: Final = "callbacks:queue"
INFLIGHT_KEY: Final = "callbacks:inflight"
INFLIGHT_SINCE_KEY: Final = "callbacks:inflight:since"
RETRY_KEY: Final = "callbacks:retry"
LOCK_KEY: Final = "callbacks:lock"

# Takes the whole list and records each entry as in flight, atomically: a crash in between loses nothing.
_TAKE_ALL = """
local items = redis.call('LRANGE', KEYS[1], 0, -1)
redis.call('DEL', KEYS[1])
for _, item in ipairs(items) do
  local id = cjson.decode(item)['id']
  redis.call('HSET', KEYS[2], id, item)
  redis.call('ZADD', KEYS[3], ARGV[1], id)
end
return items
"""
_TAKE_KEYS: Final = [QUEUE_KEY, INFLIGHT_KEY, INFLIGHT_SINCE_KEY]


@dataclass(frozen=True)
class SenderTiming:
    interval: float = SEND_INTERVAL_SECONDS
    retry_delays: tuple[float, ...] = RETRY_DELAYS_SECONDS
    stuck_after: float = STUCK_AFTER_SECONDS


OLD_SYSTEM_TIMING: Final = SenderTiming()


@dataclass(frozen=True)
class Entry:
    """One queued callback: one task's payload for one URL."""

    id: str
    url: str
    payload: dict[str, Any]
    task_id: str | None = None
    batched: bool = True
    attempt: int = 0  # failed requests so far

    def encode(self) -> str:
        return json.dumps(self.__dict__, separators=(",", ":"))

    @classmethod
    def decode(cls, text: str) -> Entry:
        return cls(**json.loads(text))


@dataclass
class SendStats:
    requests: int = 0
    delivered: int = 0  # callbacks (items), not requests
    retries_scheduled: int = 0
    failed: int = 0


def callback_payload(task: Task) -> dict[str, Any]:
    """The old callback body: status, result path or error details, processing and completion time."""
    payload: dict[str, Any] = {
        "task_id": str(task.id),
        "status": task.state.value,
        "processing_time_ms": task.processing_ms,
        "started_at": task.started_at.isoformat() if task.started_at else None,
        "completed_at": task.completed_at.isoformat() if task.completed_at else None,
    }
    if task.state is TaskState.SUCCEEDED:
        payload["result_path"] = task.result_object_key
    else:
        payload["error"] = {"code": task.error_code, "message": task.error_message, "stage": task.error_stage}
    return payload


def enqueue(
    client: redis.Redis,
    url: str,
    payload: dict[str, Any],
    *,
    task_id: str | None = None,
    batched: bool = True,
) -> None:
    """What a worker does with a finished task's callback: RPUSH it for the scheduler."""
    entry = Entry(uuid.uuid4().hex, url, payload, task_id=task_id, batched=batched)
    client.rpush(QUEUE_KEY, entry.encode())


def post(client: httpx.Client, url: str, body: bytes) -> bool:
    """One callback request; True when the receiver answered 2xx."""
    try:
        response = client.post(url, content=body, headers={"Content-Type": "application/json"})
    except httpx.HTTPError as exc:
        log.warning("callback to %s failed: %s", url, exc)
        return False
    if not response.is_success:
        log.warning("callback to %s answered %d", url, response.status_code)
    return response.is_success


class OldCallbackSender:
    def __init__(
        self,
        redis_url: str,
        sessions: sessionmaker[Session] | None = None,
        timing: SenderTiming = OLD_SYSTEM_TIMING,
    ) -> None:
        self._redis = redis.Redis.from_url(redis_url, decode_responses=True)
        self._take_all = self._redis.register_script(_TAKE_ALL)
        self._sessions = sessions  # None: no task rows to update (a benchmark's own payloads)
        self._timing = timing
        self._http = httpx.Client(timeout=REQUEST_TIMEOUT_SECONDS)
        self._next_slot = 0.0  # time.monotonic() before which no request may start
        self.stats = SendStats()

    def close(self) -> None:
        self._http.close()
        self._redis.close()

    def enqueue(
        self, url: str, payload: dict[str, Any], *, task_id: str | None = None, batched: bool = True
    ) -> None:
        enqueue(self._redis, url, payload, task_id=task_id, batched=batched)

    def pending(self) -> int:
        """Callbacks not finished yet: queued, in flight or waiting for a retry."""
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.llen(QUEUE_KEY)
            pipe.hlen(INFLIGHT_KEY)
            pipe.zcard(RETRY_KEY)
            return sum(int(count) for count in pipe.execute())

    def run(self, stop: threading.Event) -> None:
        """The scheduler loop: drain whenever there is work, look again every interval otherwise."""
        while not stop.is_set():
            if not self.drain_once(stop):
                stop.wait(self._timing.interval)

    def run_until_drained(self, timeout: float) -> SendStats:
        """Send until nothing is queued, in flight or waiting for a retry; returns the totals so far."""
        stop = threading.Event()
        deadline = time.monotonic() + timeout
        while self.pending():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.pending()} callbacks still pending after {timeout:g} s")
            if not self.drain_once(stop):
                stop.wait(min(self._timing.interval, max(0.0, deadline - time.monotonic())))
        return self.stats

    def drain_once(self, stop: threading.Event) -> int:
        """One drain under the lock; returns the number of requests sent (0 also when another holds it)."""
        lock = self._redis.lock(LOCK_KEY, timeout=LOCK_TIMEOUT_SECONDS)
        if not lock.acquire(blocking=False):
            return 0
        try:
            now = time.time()
            self._promote_due_retries(now)
            self._sweep_stuck(now)
            taken = [Entry.decode(item) for item in self._take_all(keys=_TAKE_KEYS, args=[now])]
            return self._send_all(_requests(taken), lock, stop)
        finally:
            try:
                lock.release()
            except LockError:
                log.warning("the callback lock expired during a drain")

    def _send_all(self, requests: list[list[Entry]], lock: Lock, stop: threading.Event) -> int:
        sent = 0
        for position, entries in enumerate(requests):
            wait = self._next_slot - time.monotonic()
            if (wait > 0 and stop.wait(wait)) or stop.is_set():
                self._requeue([entry for later in requests[position:] for entry in later])
                break
            try:
                lock.reacquire()  # renew the TTL: a long drain must not let a second drainer in
            except LockError:
                log.error("lost the callback lock; the sweeper will re-queue what is left in flight")
                break
            self._next_slot = time.monotonic() + self._timing.interval
            self._send(entries)
            sent += 1
        return sent

    def _send(self, entries: list[Entry]) -> None:
        batched = entries[0].batched
        document: Any = [entry.payload for entry in entries] if batched else entries[0].payload
        body = json.dumps(document, separators=(",", ":")).encode()
        self.stats.requests += 1
        if post(self._http, entries[0].url, body):
            self._finish(entries)
            self.stats.delivered += len(entries)
            self._record(entries, CallbackStatus.DELIVERED)
            return
        retries = [entry for entry in entries if entry.attempt < len(self._timing.retry_delays)]
        given_up = [entry for entry in entries if entry.attempt >= len(self._timing.retry_delays)]
        now = time.time()
        with self._redis.pipeline() as pipe:
            for entry in retries:
                again = Entry(**{**entry.__dict__, "attempt": entry.attempt + 1})
                pipe.zadd(RETRY_KEY, {again.encode(): now + self._timing.retry_delays[entry.attempt]})
            self._finish(entries, pipe)
            pipe.execute()
        self.stats.retries_scheduled += len(retries)
        self.stats.failed += len(given_up)
        self._record(given_up, CallbackStatus.FAILED)

    def _finish(self, entries: Sequence[Entry], pipe: Pipeline | None = None) -> None:
        ids = [entry.id for entry in entries]
        target = pipe if pipe is not None else self._redis.pipeline()
        target.hdel(INFLIGHT_KEY, *ids)
        target.zrem(INFLIGHT_SINCE_KEY, *ids)
        if pipe is None:
            target.execute()

    def _requeue(self, entries: Sequence[Entry]) -> None:
        if not entries:
            return
        with self._redis.pipeline() as pipe:
            pipe.rpush(QUEUE_KEY, *[entry.encode() for entry in entries])
            self._finish(entries, pipe)
            pipe.execute()

    def _promote_due_retries(self, now: float) -> None:
        due = self._redis.zrangebyscore(RETRY_KEY, "-inf", now)
        if due:
            with self._redis.pipeline() as pipe:
                pipe.rpush(QUEUE_KEY, *due)
                pipe.zrem(RETRY_KEY, *due)
                pipe.execute()

    def _sweep_stuck(self, now: float) -> None:
        """Re-queue callbacks a drainer took but never finished (it crashed or lost the lock)."""
        # str members: the client decodes responses (no scores asked for).
        ids = cast(
            list[str], self._redis.zrangebyscore(INFLIGHT_SINCE_KEY, "-inf", now - self._timing.stuck_after)
        )
        if not ids:
            return
        items = [item for item in self._redis.hmget(INFLIGHT_KEY, ids) if item is not None]
        log.warning("re-queueing %d callbacks stuck in flight", len(items))
        with self._redis.pipeline() as pipe:
            if items:
                pipe.rpush(QUEUE_KEY, *items)
            pipe.hdel(INFLIGHT_KEY, *ids)
            pipe.zrem(INFLIGHT_SINCE_KEY, *ids)
            pipe.execute()

    def _record(self, entries: Sequence[Entry], status: CallbackStatus) -> None:
        task_ids = [entry.task_id for entry in entries if entry.task_id]
        if self._sessions is not None and task_ids:
            records.set_callback_status(self._sessions, task_ids, status)


def _requests(entries: Sequence[Entry]) -> list[list[Entry]]:
    """The requests of one drain: per URL one batch of its batched callbacks, each non-batched alone;
    in the order their first callback was queued."""
    requests: list[list[Entry]] = []
    batches: dict[str, list[Entry]] = {}
    for entry in entries:
        if not entry.batched:
            requests.append([entry])
        elif entry.url in batches:
            batches[entry.url].append(entry)
        else:
            batches[entry.url] = [entry]
            requests.append(batches[entry.url])
    return requests


@dataclass
class _Shutdown:
    stop: threading.Event = field(default_factory=threading.Event)

    def __call__(self, signum: int, frame: object) -> None:
        self.stop.set()


def main() -> None:
    parser = argparse.ArgumentParser(description="the old batched callback sender (one scheduler)")
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--database-url", help="update the tasks' callback_status in this task store")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sessions = make_sessions(make_engine(args.database_url, pool_size=1)) if args.database_url else None
    sender = OldCallbackSender(args.redis_url, sessions)
    shutdown = _Shutdown()
    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    log.info("callback sender running (one request every %g s)", SEND_INTERVAL_SECONDS)
    try:
        sender.run(shutdown.stop)
    finally:
        sender.close()


if __name__ == "__main__":
    main()
