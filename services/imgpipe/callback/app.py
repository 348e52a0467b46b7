"""The callback service: a faust-streaming app that tells clients about finished tasks.

    result topic --route--> callback requests topic (keyed by URL) --deliver--> per-URL state (table)
                                       ^                                              |
                                       +---- outcomes of sends, wake-ups <---- sender tasks (HTTP)

- `route` re-keys results that want a callback by their URL, so everything about one URL meets in
  one partition, co-partitioned with the `url-state` table (RocksDB locally, a changelog topic in
  Kafka).
- `deliver` is the only code that changes a URL's queue (see url_queue.py): it enqueues results,
  applies send outcomes, and starts the sends that the URL's breaker, in-flight cap and token bucket
  allow. It never waits on HTTP itself: sends run as tasks, each bounded by the URL's timeout, so a
  hanging receiver delays nobody else; their outcomes come back through the topic.
- Policies come from the compacted policy topic, read whole by every worker as a global table.
- Wake-ups (a batch's max delay, a retry's backoff, a rate-limit deferral) are scheduled in memory
  and sent as commands when due; a periodic sweep re-schedules every URL with work, which is how a
  restarted worker picks up the queues it recovered from the changelog.
"""

from __future__ import annotations

import asyncio
import base64
import heapq
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import faust
from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind, StatusCode
from prometheus_client import Counter, Gauge, Histogram

from imgpipe.callback.kafka_auth import faust_credentials
from imgpipe.callback.payloads import callback_item, encode_request, wants_inline_result
from imgpipe.callback.policies import PolicyBook
from imgpipe.callback.sender import SendResult, WebhookSender
from imgpipe.callback.settings import CallbackSettings
from imgpipe.callback.signing import WebhookSigner
from imgpipe.callback.url_queue import (
    Delivery,
    Ended,
    Policy,
    Queued,
    enqueue,
    from_json,
    is_known,
    item_from_json,
    item_to_json,
    plan,
    restore,
    settle,
    to_json,
)
from imgpipe.contracts.registry import Registry, TopicKey
from imgpipe.netguard import EgressPolicy
from imgpipe.objects import ObjectStore, ObjectStoreError
from imgpipe.ratelimit import KeyedLimiter
from imgpipe.runtime.kafka import (
    DEAD_LETTER_GROUP_HEADER,
    DEAD_LETTER_REASON_HEADER,
    ORIGIN_TOPIC_HEADER,
)
from imgpipe.runtime.telemetry import context_from_headers, context_from_traceparent, current_traceparent
from imgpipe.v1 import callback_pb2, events_pb2, result_pb2, task_pb2

log = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)

APP_ID = "imgpipe.callback"
WAKEUP_TICK_SECONDS = 0.05
SWEEP_SECONDS = 5.0

DELIVERIES = Counter("imgpipe_callback_deliveries_total", "Callback requests sent, by verdict", ["verdict"])
OUTCOMES = Counter("imgpipe_callback_outcomes_total", "Callbacks (per task) ended, by outcome", ["outcome"])
LATENCY = Histogram(
    "imgpipe_callback_delivery_seconds",
    "Time from sending a callback request to its answer",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
BATCH_SIZES = Histogram(
    "imgpipe_callback_batch_size", "Results per callback request", buckets=(1, 2, 5, 10, 20, 50, 100, 200)
)
RATE_LIMITED = Counter("imgpipe_callback_rate_limited_total", "Sends a URL's token bucket deferred")
QUEUE_DEPTH = Gauge(
    "imgpipe_callback_queue_depth", "Results waiting, by state (pending, in_flight, retrying)", ["state"]
)
OPEN_BREAKERS = Gauge("imgpipe_callback_open_breakers", "URLs whose circuit breaker is open")
DISABLED_URLS = Gauge("imgpipe_callback_disabled_urls", "URLs disabled by a 410 answer")

_OUTCOME_NAMES = {
    value: name.removeprefix("CALLBACK_OUTCOME_").lower()
    for name, value in callback_pb2.CallbackOutcome.items()
}
_VERDICT_NAMES = {
    value: name.removeprefix("DELIVERY_VERDICT_").lower()
    for name, value in callback_pb2.DeliveryVerdict.items()
}


@dataclass
class Wakeups:
    """When each URL wants planning again; the earliest request per URL wins."""

    _heap: list[tuple[float, str]] = field(default_factory=list)
    _due: dict[str, float] = field(default_factory=dict)

    def schedule(self, url: str, at: float) -> None:
        if url in self._due and self._due[url] <= at:
            return
        self._due[url] = at
        heapq.heappush(self._heap, (at, url))

    def is_scheduled(self, url: str) -> bool:
        return url in self._due

    def pop_due(self, now: float) -> list[str]:
        due = []
        while self._heap and self._heap[0][0] <= now:
            at, url = heapq.heappop(self._heap)
            if self._due.get(url) == at:
                del self._due[url]
                due.append(url)
        return due


class CallbackService:
    """Everything the app's agents and timers share; `build_app` wires it into faust."""

    def __init__(self, settings: CallbackSettings, registry: Registry) -> None:
        self.settings = settings
        self.registry = registry
        self.signer = WebhookSigner(_master_keys(settings))
        self.objects = ObjectStore(settings, presign_endpoint_url=settings.s3_public_endpoint_url)
        self.sender: WebhookSender | None = None  # created inside the event loop
        self.sending: set[str] = set()  # webhook ids this process is sending right now
        self.wakeups = Wakeups()
        # The table's bucket decides when a send starts; this one holds the request itself back
        # when building bodies or a busy loop bunched sends up, so the receiver never sees more
        # than its rate plus burst in any second.
        self.on_the_wire = KeyedLimiter()
        self.ready = False
        self.policies = PolicyBook(settings, registry.name(TopicKey.CALLBACK_POLICIES))
        self.heartbeat: Callable[[], None] = lambda: None  # liveness: the event loop still turns
        self._send_slots: asyncio.Semaphore | None = None
        self._tasks: set[asyncio.Future[None]] = set()

    # -- policies ------------------------------------------------------------------------------

    def policy_for(self, url: str) -> Policy:
        """The URL's policy over its host's over the service defaults (zero fields mean default)."""
        s = self.settings
        policies = self.policies
        stored = _policy(policies.get(url)) or _policy(policies.get(urlsplit(url).hostname or ""))
        found = stored or callback_pb2.CallbackPolicy()
        mode = {
            task_pb2.CALLBACK_MODE_IMMEDIATE: "immediate",
            task_pb2.CALLBACK_MODE_BATCHED: "batched",
        }.get(found.mode_override)
        return Policy(
            rate_per_second=found.rate_per_second or s.callback_default_rate_per_second,
            burst=found.burst or s.callback_default_burst,
            batch_size=found.batch_size or s.callback_default_batch_size,
            max_delay_seconds=(found.max_delay_ms or s.callback_default_max_delay_ms) / 1000,
            timeout_seconds=(found.timeout_ms or s.callback_default_timeout_ms) / 1000,
            mode_override=mode,
            disabled=found.disabled,
            max_attempts=s.callback_max_attempts,
            backoff_base_seconds=s.callback_backoff_base_seconds,
            backoff_cap_seconds=s.callback_backoff_cap_seconds,
            breaker_fail_max=s.callback_breaker_fail_max,
            breaker_reset_seconds=s.callback_breaker_reset_seconds,
            max_in_flight=s.callback_max_in_flight_per_url,
        )

    # -- sending -------------------------------------------------------------------------------

    def start_send(
        self,
        url: str,
        delivery: Delivery,
        items: list[Queued],
        policy: Policy,
        requests: faust.TopicT,
    ) -> None:
        self.sending.add(delivery.webhook_id)
        BATCH_SIZES.observe(len(items))
        task = asyncio.ensure_future(self._send(url, delivery, items, policy, requests))
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    async def _send(
        self,
        url: str,
        delivery: Delivery,
        items: list[Queued],
        policy: Policy,
        requests: faust.TopicT,
    ) -> None:
        if self.sender is None:
            egress = EgressPolicy.from_settings(allow_networks=self.settings.callback_allow_networks)
            self.sender = WebhookSender(egress)
            self._send_slots = asyncio.Semaphore(self.settings.callback_max_concurrent_sends)
        assert self._send_slots is not None
        try:
            async with self._send_slots:
                sent = await self._traced_send(url, delivery, items, policy)
            DELIVERIES.labels(_VERDICT_NAMES[sent.verdict]).inc()
            LATENCY.observe(sent.latency_ms / 1000)
            outcome = callback_pb2.DeliveryOutcome(
                webhook_id=delivery.webhook_id,
                attempt=delivery.attempts,
                verdict=sent.verdict,
                status_code=sent.status_code,
                latency_ms=sent.latency_ms,
                error=sent.error[:500],
                retry_after_ms=int((sent.retry_after_seconds or 0) * 1000),
            )
            outcome.attempted_at.GetCurrentTime()
            await requests.send(
                key=url.encode(), value=callback_pb2.CallbackCommand(outcome=outcome).SerializeToString()
            )
        except Exception:
            # The outcome is lost: forget the send, so the next planning of this URL sends it again.
            log.exception("callback send to %s failed before its outcome was recorded", url)
            self.sending.discard(delivery.webhook_id)
            self.wakeups.schedule(url, time.time() + 1)

    async def _traced_send(
        self, url: str, delivery: Delivery, items: list[Queued], policy: Policy
    ) -> SendResult:
        """The send as a CLIENT span in the trace of the (first) task it tells about, linked to the
        traces of the other tasks of a batch."""
        contexts = [context_from_traceparent(item.traceparent) for item in items if item.traceparent]
        links = [Link(span_context) for span_context in _span_contexts(contexts[1:])]
        parts = urlsplit(url)
        attributes: dict[str, str | int] = {
            "http.request.method": "POST",
            "url.scheme": parts.scheme,
            "server.address": parts.hostname or "",
            "imgpipe.callback.webhook_id": delivery.webhook_id,
            "imgpipe.callback.attempt": delivery.attempts,
            "imgpipe.callback.tasks": len(delivery.task_ids),
        }
        if parts.port is not None:
            attributes["server.port"] = parts.port
        with _tracer.start_as_current_span(
            "POST",
            context=contexts[0] if contexts else None,
            kind=SpanKind.CLIENT,
            links=links,
            attributes=attributes,
        ) as span:
            sent = await self._build_and_send(url, delivery, items, policy)
            if sent.status_code:
                span.set_attribute("http.response.status_code", sent.status_code)
            if sent.verdict != callback_pb2.DELIVERY_VERDICT_DELIVERED:
                span.set_status(StatusCode.ERROR, sent.error)
            return sent

    async def _build_and_send(
        self, url: str, delivery: Delivery, items: list[Queued], policy: Policy
    ) -> SendResult:
        assert self.sender is not None
        try:
            body = await asyncio.to_thread(self._body, items, delivery.batched)
        except ValueError as exc:  # a result no callback can be made of: retrying cannot help
            reason = f"cannot build the callback: {exc}"
            return SendResult(
                callback_pb2.DELIVERY_VERDICT_REFUSED, status_code=0, latency_ms=0, error=reason
            )
        except ObjectStoreError as exc:  # the result to inline could not be read: retried like a send
            reason = f"cannot read the result to inline: {exc}"
            return SendResult(callback_pb2.DELIVERY_VERDICT_RETRY, status_code=0, latency_ms=0, error=reason)
        await self._pace(url, policy)
        headers = self.signer.headers(delivery.tenant_id, delivery.webhook_id, body, int(time.time()))
        return await self.sender.send(url, body, headers, policy.timeout_seconds)

    async def _pace(self, url: str, policy: Policy) -> None:
        """Wait for this process's token of the URL (see `on_the_wire`)."""
        wait = self.on_the_wire.try_acquire(url, policy.rate_per_second, policy.burst)
        while wait > 0:
            await asyncio.sleep(wait)
            wait = self.on_the_wire.try_acquire(url, policy.rate_per_second, policy.burst)

    def _body(self, items: list[Queued], batched: bool) -> bytes:
        return encode_request([self._item(q) for q in items], batched=batched)

    def _item(self, queued: Queued) -> dict[str, Any]:
        result = result_pb2.TaskResult.FromString(base64.b64decode(queued.result))
        if result.state != task_pb2.TASK_STATE_SUCCEEDED or not result.HasField("result"):
            return callback_item(result, result_url=None, inline_png=None)
        key = result.result.object_key
        url = self.objects.presigned_get_url(key, self.settings.result_url_ttl_seconds)
        inline = None
        if wants_inline_result(result, max_bytes=self.settings.callback_inline_max_bytes):
            inline = self.objects.get(key)
            if len(inline) > self.settings.callback_inline_max_bytes:
                inline = None  # the recorded size was wrong; the URL alone still reaches the result
        return callback_item(result, result_url=url, inline_png=inline)

    # -- records -------------------------------------------------------------------------------

    def attempt_events(
        self,
        url: str,
        delivery: Delivery,
        outcome: callback_pb2.CallbackOutcome.ValueType,
        report: callback_pb2.DeliveryOutcome | None,
        next_attempt_at: float | None,
        error: str = "",
    ) -> Iterable[tuple[bytes, bytes]]:
        """(key, value) of the TaskEvent each task of the delivery gets for this attempt."""
        attempt = callback_pb2.CallbackAttempt(
            webhook_id=delivery.webhook_id,
            task_ids=delivery.task_ids,
            url=url,
            attempt=delivery.attempts,
            outcome=outcome,
            error=error or (report.error if report else ""),
        )
        if report is not None:
            attempt.status_code = report.status_code
            attempt.latency_ms = report.latency_ms
            attempt.attempted_at.CopyFrom(report.attempted_at)
        else:
            attempt.attempted_at.GetCurrentTime()
        if next_attempt_at is not None:
            attempt.next_attempt_at.FromNanoseconds(int(next_attempt_at * 1e9))
        for task_id in delivery.task_ids:
            event = events_pb2.TaskEvent(task_id=task_id, callback_attempt=attempt)
            event.occurred_at.GetCurrentTime()
            yield task_id.encode(), event.SerializeToString()


def _span_contexts(contexts: Iterable[Any]) -> list[trace.SpanContext]:
    found = (trace.get_current_span(context).get_span_context() for context in contexts)
    return [span_context for span_context in found if span_context.is_valid]


def _policy(value: bytes | None) -> callback_pb2.CallbackPolicy | None:
    return None if value is None else callback_pb2.CallbackPolicy.FromString(value)


def _master_keys(settings: CallbackSettings) -> list[str]:
    keys = [key.strip() for key in settings.webhook_signing_keys.get_secret_value().split(",") if key.strip()]
    if not keys:
        from imgpipe.runtime.settings import SettingsError

        raise SettingsError("IMGPIPE_WEBHOOK_SIGNING_KEYS: set at least one master key to sign webhooks with")
    return keys


def build_app(settings: CallbackSettings, registry: Registry) -> tuple[faust.App, CallbackService]:  # noqa: C901 (issue 12 splits it (url_table, deliver, sender))
    service = CallbackService(settings, registry)
    requests_spec = registry.topic(TopicKey.CALLBACK_REQUESTS)
    app = faust.App(
        APP_ID,
        broker=[f"kafka://{server}" for server in settings.kafka_bootstrap_servers.split(",")],
        broker_credentials=faust_credentials(settings.kafka_client_config),
        store=settings.callback_store,
        datadir=settings.callback_data_dir,
        web_enabled=False,
        topic_partitions=requests_spec.partitions,
        topic_replication_factor=requests_spec.replication_factor,
        consumer_auto_offset_reset="earliest",
        key_serializer="raw",
        value_serializer="raw",
        producer_partitioner=None,  # aiokafka's default: murmur2 on the key, as the Java client and ours
    )

    def topic(key: TopicKey, **options: Any) -> faust.TopicT:
        return app.topic(registry.name(key), key_type=bytes, value_type=bytes, **options)

    results = topic(TopicKey.RESULT)
    requests = topic(TopicKey.CALLBACK_REQUESTS, partitions=requests_spec.partitions)
    events = topic(TopicKey.EVENTS)
    dead_letters = topic(TopicKey.DEAD_LETTER)

    # Everything about the URLs of a partition lives in one table: a URL's state ("q"), its queued
    # results ("b", by sequence number) and their index by task ("t", to drop redeliveries). Each
    # write goes to the changelog partition of the event being handled (co-partitioned with the
    # requests topic), and one table means one changelog topic, so what survives a crash is always
    # a prefix of the writes in the order made. `handle` writes so that every prefix is completed
    # by handling the event again, which is what Kafka does for an event whose offset was not
    # committed (faust commits only after the changelog writes are acknowledged).
    urls = app.Table(
        "url-state",
        partitions=requests_spec.partitions,
        schema=faust.Schema(key_serializer="raw", value_serializer="json"),
    )

    def queue_key(url: str) -> str:
        return f"q\x00{url}"

    def backlog_key(url: str, seq: int) -> str:
        return f"b\x00{url}\x00{seq:012d}"

    def task_key(url: str, task_id: str, replay_id: str) -> str:
        return f"t\x00{url}\x00{task_id}\x00{replay_id}"

    def peeker(url: str) -> Callable[[int], Queued | None]:
        return lambda seq: item_from_json(urls.get(backlog_key(url, seq)))

    def forget(url: str, delivery: Delivery) -> list[Queued]:
        """Drop an ended delivery's results from the backlog; returns them."""
        items = []
        for seq in delivery.seqs:
            item = item_from_json(urls.pop(backlog_key(url, seq), None))
            if item is not None:
                items.append(item)
                urls.pop(task_key(url, item.task_id, item.replay_id), None)
        return items

    @app.agent(results)
    async def route(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            try:
                result = result_pb2.TaskResult.FromString(event.value)
            except Exception as exc:  # the projector dead-letters undecodable results
                log.warning("skipping an undecodable result: %s", exc)
                continue
            if result.HasField("callback") and result.callback.url:
                # The task's trace goes on here and rides the request (then the queued item) to the send.
                with _tracer.start_as_current_span(
                    f"process {results.get_topic_name()}",
                    context=context_from_headers(_headers(event.headers)),
                    kind=SpanKind.CONSUMER,
                    attributes={
                        "messaging.system": "kafka",
                        "messaging.destination.name": results.get_topic_name(),
                        "messaging.consumer.group.name": APP_ID,
                        "messaging.kafka.message.key": result.task_id,
                    },
                ):
                    traceparent = current_traceparent()
                    command = callback_pb2.CallbackCommand(result=result)
                    await requests.send(
                        key=result.callback.url.encode(),
                        value=command.SerializeToString(),
                        headers={"traceparent": traceparent.encode()} if traceparent else None,
                    )

    @app.agent(requests)
    async def deliver(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            url = (event.key or b"").decode()
            try:
                command = callback_pb2.CallbackCommand.FromString(event.value)
            except Exception as exc:
                await dead_letters.send(
                    key=event.key,
                    value=event.value,
                    headers={
                        DEAD_LETTER_REASON_HEADER: f"poison message: {exc}".encode(),
                        DEAD_LETTER_GROUP_HEADER: APP_ID.encode(),
                        ORIGIN_TOPIC_HEADER: requests.get_topic_name().encode(),
                    },
                )
                continue
            # Event time, not the clock: handling an event again after a crash then forms the same
            # batches (and so the same webhook-ids) as the first time.
            now = event.message.timestamp or time.time()
            traceparent = _headers(event.headers).get("traceparent", b"").decode("latin-1")
            await handle(url, command, now, traceparent)

    async def handle(
        url: str, command: callback_pb2.CallbackCommand, now: float, traceparent: str = ""
    ) -> None:
        policy = service.policy_for(url)
        queue = from_json(urls.get(queue_key(url)))
        kind = command.WhichOneof("command")
        if kind == "result":
            result = command.result
            index_key = task_key(url, result.task_id, command.replay_id)
            seq = urls.get(index_key)
            if seq is not None:
                # Handled before a crash that kept the result and its index but not the URL's
                # state: count it in again.
                queue = restore(queue, seq)
            elif command.replay_id or not is_known(queue, result.task_id):
                queue, seq = enqueue(queue)
                item = Queued(
                    task_id=result.task_id,
                    tenant_id=result.tenant_id,
                    result=base64.b64encode(result.SerializeToString()).decode(),
                    batched=result.callback.mode == task_pb2.CALLBACK_MODE_BATCHED,
                    queued_at=now,
                    replay_id=command.replay_id,
                    traceparent=traceparent,
                )
                urls[backlog_key(url, seq)] = item_to_json(item)
                urls[index_key] = seq
        elif kind == "outcome":
            report = command.outcome
            service.sending.discard(report.webhook_id)
            settled = settle(queue, report, policy, now)
            queue = settled.queue
            if settled.ended is not None:
                items = forget(url, settled.ended.delivery)
                await record(url, settled.ended.delivery, items, settled.ended.outcome, report, None)
                if settled.ended.outcome == callback_pb2.CALLBACK_OUTCOME_FAILED:
                    await dead_letter(url, settled.ended, items)
            elif settled.outcome is not None:
                retrying = _find(queue, report.webhook_id)
                if retrying is not None:
                    items = [item for item in map(peeker(url), retrying.seqs) if item is not None]
                    await record(url, retrying, items, settled.outcome, report, settled.next_attempt_at)
        peek = peeker(url)
        planned = plan(queue, policy, now, service.sending, peek)
        RATE_LIMITED.inc(planned.rate_limited)
        for ended in planned.ended:
            items = forget(url, ended.delivery)
            await record(url, ended.delivery, items, ended.outcome, None, None, ended.reason)
        urls[queue_key(url)] = to_json(planned.queue)  # last: see the table's comment
        for delivery in planned.start:
            items = [item for item in map(peek, delivery.seqs) if item is not None]
            service.start_send(url, delivery, items, policy, requests)
        if planned.wake_at is not None:
            service.wakeups.schedule(url, planned.wake_at)

    async def record(
        url: str,
        delivery: Delivery,
        items: list[Queued],
        outcome: callback_pb2.CallbackOutcome.ValueType,
        report: callback_pb2.DeliveryOutcome | None,
        next_attempt_at: float | None,
        error: str = "",
    ) -> None:
        """Publish the attempt's event for each task of the delivery, each in its task's trace."""
        if outcome != callback_pb2.CALLBACK_OUTCOME_RETRYING:
            OUTCOMES.labels(_OUTCOME_NAMES[outcome]).inc(len(delivery.task_ids))
        traces = {item.task_id: item.traceparent for item in items if item.traceparent}
        for key, value in service.attempt_events(url, delivery, outcome, report, next_attempt_at, error):
            traceparent = traces.get(key.decode())
            await events.send(
                key=key, value=value, headers={"traceparent": traceparent.encode()} if traceparent else None
            )

    async def dead_letter(url: str, ended: Ended, items: list[Queued]) -> None:
        for item in items:
            original = callback_pb2.CallbackCommand(
                result=result_pb2.TaskResult.FromString(base64.b64decode(item.result)),
                replay_id=item.replay_id,
            )
            await dead_letters.send(
                key=url.encode(),
                value=original.SerializeToString(),
                headers={
                    DEAD_LETTER_REASON_HEADER: ended.reason.encode(),
                    DEAD_LETTER_GROUP_HEADER: APP_ID.encode(),
                    ORIGIN_TOPIC_HEADER: requests.get_topic_name().encode(),
                },
            )

    def recovered() -> bool:
        """Whether the tables have been recovered (once is enough: ready stays set)."""
        if app.tables.recovery.completed.is_set():  # type: ignore[attr-defined]
            service.ready = True
        return service.ready

    @app.timer(WAKEUP_TICK_SECONDS)  # type: ignore[untyped-decorator]
    async def send_due_wakeups() -> None:
        service.heartbeat()
        # Checked on this tick, not only by the sweep: readiness used to wait for the first sweep,
        # up to SWEEP_SECONDS after recovery (~5 s of every warm start of the pipeline).
        recovered()
        wakeup = callback_pb2.CallbackCommand(wakeup=callback_pb2.Wakeup()).SerializeToString()
        for url in service.wakeups.pop_due(time.time()):
            await requests.send(key=url.encode(), value=wakeup)

    @app.timer(SWEEP_SECONDS)  # type: ignore[untyped-decorator]
    async def sweep() -> None:
        """Re-schedule every local URL with work (after a restart, the in-memory schedule is empty)
        and export the queue gauges."""
        if not app.tables.recovery.completed.is_set():  # type: ignore[attr-defined]
            return
        recovered()
        depth = {"pending": 0, "in_flight": 0, "retrying": 0}
        open_breakers = disabled = 0
        now = time.time()
        for raw_key, stored in list(urls.items()):
            key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
            if not key.startswith("q\x00"):
                continue
            url = key.removeprefix("q\x00")
            queue = from_json(stored)
            depth["pending"] += queue.backlog
            for delivery in queue.deliveries:
                state = (
                    "in_flight"
                    if delivery.in_flight_since is not None
                    else "retrying"
                    if delivery.attempts
                    else "pending"
                )
                depth[state] += len(delivery.task_ids)
            open_breakers += queue.breaker.open_until > now
            disabled += queue.disabled
            if not queue.is_idle and not service.wakeups.is_scheduled(url):
                service.wakeups.schedule(url, now)
        for state, count in depth.items():
            QUEUE_DEPTH.labels(state).set(count)
        OPEN_BREAKERS.set(open_breakers)
        DISABLED_URLS.set(disabled)

    return app, service


def _headers(headers: Any) -> dict[str, bytes]:
    """A consumed event's headers as str -> bytes, whatever faust handed over (dict, pairs, None)."""
    pairs = headers.items() if isinstance(headers, dict) else (headers or ())
    return {
        (key.decode("latin-1") if isinstance(key, bytes) else str(key)): value
        for key, value in pairs
        if isinstance(value, bytes)
    }


def _find(queue: Any, webhook_id: str) -> Delivery | None:
    return next((d for d in queue.deliveries if d.webhook_id == webhook_id), None)
