"""The callback service on the real stack, with real HTTP receivers on loopback.

Results are published straight to the result topic (as matte or the reaper would), so these tests
exercise the callback app alone; test_pipeline.py covers a callback of a real task end to end.
"""

from __future__ import annotations

import collections
import functools
import json
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jsonschema
import pytest
from confluent_kafka import Producer
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from imgpipe.callback.signing import WebhookSigner
from imgpipe.client import ApiClient, TaskRequest
from imgpipe.contracts.registry import TopicKey, default_registry, schemas_dir
from imgpipe.localstack.pipeline import DEMO_TENANT, LocalPipeline
from imgpipe.localstack.waiting import wait_until
from imgpipe.runtime.kafka import DEAD_LETTER_REASON_HEADER, ORIGIN_TOPIC_HEADER, Received
from imgpipe.samples import photo_jpeg
from imgpipe.testing.callbacks import set_policies
from imgpipe.testing.kafka import read_topic
from imgpipe.testing.receivers import Behavior, Receivers, run_receivers
from imgpipe.v1 import callback_pb2, events_pb2, result_pb2, task_pb2

pytestmark = pytest.mark.integration

REGISTRY = default_registry()


@pytest.fixture
def receivers(pipeline: LocalPipeline) -> Iterator[Receivers]:
    with run_receivers() as running:
        yield running


class Results:
    """Publishes TaskResults to the result topic, as the pipeline's last stage does."""

    def __init__(self, pipeline: LocalPipeline) -> None:
        self._pipeline = pipeline
        self._producer = Producer(
            {"bootstrap.servers": pipeline.endpoints.kafka_bootstrap_servers, "linger.ms": 5}
        )
        self._topic = REGISTRY.name(TopicKey.RESULT)

    def publish(self, url: str, count: int, *, batched: bool = False, failed: bool = False) -> list[str]:
        task_ids = [str(uuid.uuid4()) for _ in range(count)]
        for task_id in task_ids:
            result = result_pb2.TaskResult(
                task_id=task_id,
                tenant_id=DEMO_TENANT,
                state=task_pb2.TASK_STATE_FAILED if failed else task_pb2.TASK_STATE_SUCCEEDED,
                processing_ms=1234,
                callback=task_pb2.CallbackSpec(
                    url=url,
                    mode=task_pb2.CALLBACK_MODE_BATCHED if batched else task_pb2.CALLBACK_MODE_IMMEDIATE,
                ),
            )
            if failed:
                result.error.CopyFrom(
                    task_pb2.TaskError(
                        code=task_pb2.ERROR_CODE_NO_PET_DETECTED,
                        message="no pet",
                        stage=task_pb2.STAGE_DETECT,
                    )
                )
            else:
                result.result.CopyFrom(
                    task_pb2.Artifact(
                        object_key=f"tasks/{task_id}/matte.png",
                        content_type="image/png",
                        width=350,
                        height=350,
                    )
                )
            result.created_at.GetCurrentTime()
            result.completed_at.GetCurrentTime()
            self._producer.produce(self._topic, key=task_id, value=result.SerializeToString())
        assert self._producer.flush(30) == 0
        return task_ids

    def close(self) -> None:
        self._producer.flush(30)

    def set_policy(self, key: str, policy: callback_pb2.CallbackPolicy | None) -> None:
        self.set_policies({key: policy})

    def set_policies(self, policies: Mapping[str, callback_pb2.CallbackPolicy | None]) -> None:
        set_policies(self._pipeline, policies)


@pytest.fixture
def results(pipeline: LocalPipeline) -> Iterator[Results]:
    published = Results(pipeline)
    yield published
    published.close()


def all_arrived(receivers: Receivers, path: str, task_ids: Sequence[str], timeout: float) -> None:
    wait_until(lambda: receivers.task_ids(path) >= set(task_ids), timeout, f"callbacks at {path}")


def arrived(receivers: Receivers, path: str, task_id: str) -> bool:
    return task_id in receivers.task_ids(path)


@pytest.mark.timeout(300)
def test_a_hundred_receivers_each_within_its_rate_plus_burst(receivers: Receivers, results: Results) -> None:
    limits = {f"/r{i}": (1.0 + i % 5, 1 + i % 3) for i in range(100)}  # rate 1..5/s, burst 1..3
    results.set_policies(
        {
            receivers.url(path): callback_pb2.CallbackPolicy(
                key=receivers.url(path), rate_per_second=rate, burst=burst
            )
            for path, (rate, burst) in limits.items()
        }
    )
    sent = {path: results.publish(receivers.url(path), 8) for path in limits}

    for path, task_ids in sent.items():
        all_arrived(receivers, path, task_ids, timeout=120)

    for path, (rate, burst) in limits.items():
        assert receivers.busiest_second(path) <= rate + burst, path


@pytest.mark.timeout(300)
def test_batched_receivers_get_full_batches_under_load_and_partial_ones_at_max_delay(
    receivers: Receivers, results: Results
) -> None:
    url = receivers.url("/batched")
    results.set_policy(
        url,
        # A max delay long enough that all 25 results are queued before it passes, even on a busy machine.
        callback_pb2.CallbackPolicy(key=url, batch_size=10, max_delay_ms=4000, rate_per_second=50, burst=50),
    )
    published = time.monotonic()
    task_ids = results.publish(url, 25, batched=True)

    all_arrived(receivers, "/batched", task_ids, timeout=60)
    sizes = sorted((len(r.items) for r in receivers.requests_to("/batched")), reverse=True)
    assert sizes[:2] == [10, 10] and sum(sizes) == 25, sizes
    partial = [r for r in receivers.requests_to("/batched") if len(r.items) < 10]
    assert partial, "the remainder comes as a partial batch once max delay passed"
    assert partial[0].at - published >= 4.0 - 0.1, "a partial batch waits for its max delay"
    schema = json.loads((schemas_dir() / "json" / "callback-batch.v1.schema.json").read_text())
    validator = _validator(schema)
    for request in receivers.requests_to("/batched"):
        validator.validate(request.json())


def _validator(schema: dict[str, object]) -> jsonschema.protocols.Validator:
    from referencing import Registry, Resource

    resources = [
        (doc["$id"], Resource.from_contents(doc))
        for doc in (json.loads(p.read_text()) for p in (schemas_dir() / "json").glob("*.schema.json"))
    ]
    return jsonschema.Draft202012Validator(schema, registry=Registry().with_resources(resources))


@pytest.mark.timeout(300)
def test_a_hanging_and_a_failing_receiver_for_60_seconds_do_not_delay_the_others(
    receivers: Receivers, results: Results
) -> None:
    hang = threading.Event()
    hang.set()
    receivers.behave("/hangs", Behavior(hang=hang))
    # Each hanging request is given 20 s: were the others queued behind it, they would wait that long.
    hangs = receivers.url("/hangs")
    results.set_policy(hangs, callback_pb2.CallbackPolicy(key=hangs, timeout_ms=20_000))
    receivers.behave("/fails", Behavior(status=500))
    results.publish(receivers.url("/hangs"), 20)
    results.publish(receivers.url("/fails"), 20)

    healthy = [f"/ok{i}" for i in range(5)]
    delays: list[float] = []
    end = time.monotonic() + 60
    while time.monotonic() < end:  # a steady trickle to the healthy receivers for the whole minute
        for path in healthy:
            published = time.monotonic()
            (task_id,) = results.publish(receivers.url(path), 1)
            wait_until(functools.partial(arrived, receivers, path, task_id), 30, f"{path} to get {task_id}")
            delays.append(time.monotonic() - published)
    hang.clear()

    assert len(receivers.requests_to("/fails")) > 1  # it was retried meanwhile
    # Their own limits (the default 10/s, burst 20) allow each at once: no delay beyond delivery
    # itself, far below the 20 s a request to /hangs takes (the margin absorbs a busy machine).
    assert max(delays) < 10.0, sorted(delays)[-5:]


@pytest.mark.timeout(300)
def test_kill_9_mid_batch_then_restart_every_callback_still_arrives(
    pipeline: LocalPipeline, receivers: Receivers, results: Results
) -> None:
    url = receivers.url("/survives")
    results.set_policy(
        url,
        callback_pb2.CallbackPolicy(key=url, batch_size=10, max_delay_ms=2000, rate_per_second=2, burst=1),
    )
    task_ids = results.publish(url, 60, batched=True)
    wait_until(lambda: len(receivers.requests_to("/survives")) >= 1, 60, "the first batch")

    pipeline.kill("callback")
    pipeline.start("callback")

    all_arrived(receivers, "/survives", task_ids, timeout=180)
    webhook_ids: dict[str, set[str]] = collections.defaultdict(set)
    for request in receivers.requests_to("/survives"):
        for item in request.items:
            webhook_ids[item["task_id"]].add(request.headers["webhook-id"])
    assert all(len(ids) == 1 for ids in webhook_ids.values()), "a duplicate must repeat its webhook-id"


def test_signatures_verify_with_the_standard_webhooks_library(
    pipeline: LocalPipeline, receivers: Receivers, results: Results
) -> None:
    (task_id,) = results.publish(receivers.url("/signed"), 1)
    all_arrived(receivers, "/signed", [task_id], timeout=60)
    request = receivers.requests_to("/signed")[0]

    secret = WebhookSigner([pipeline.state.signing_key]).secrets_for(DEMO_TENANT)[0]
    verified = Webhook(secret).verify(request.body, request.headers)
    assert verified["task_id"] == task_id
    schema = json.loads((schemas_dir() / "json" / "callback.v1.schema.json").read_text())
    _validator(schema).validate(request.json())
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(request.body + b" ", request.headers)


@pytest.mark.timeout(300)
def test_a_policy_change_takes_effect_within_seconds_without_a_restart(
    receivers: Receivers, results: Results
) -> None:
    url = receivers.url("/policy")
    results.set_policy(url, callback_pb2.CallbackPolicy(key=url, rate_per_second=1, burst=1))
    task_ids = results.publish(url, 40)
    wait_until(lambda: len(receivers.requests_to("/policy")) >= 3, 30, "slow deliveries")

    changed_at = time.monotonic()
    results.set_policy(url, callback_pb2.CallbackPolicy(key=url, rate_per_second=100, burst=50))

    all_arrived(receivers, "/policy", task_ids, timeout=30)
    assert time.monotonic() - changed_at < 10  # at 1/s the rest would have taken over 30 s


@pytest.mark.timeout(300)
def test_410_disables_the_url_and_the_last_failed_attempt_is_dead_lettered(
    pipeline: LocalPipeline, receivers: Receivers, results: Results
) -> None:
    bootstrap = pipeline.endpoints.kafka_bootstrap_servers
    receivers.behave("/gone", Behavior(status=410))
    receivers.behave("/down", Behavior(status=503))
    results.publish(receivers.url("/gone"), 1)
    (down,) = results.publish(receivers.url("/down"), 1)
    wait_until(lambda: receivers.requests_to("/gone"), 60, "the request answered with 410")

    later = set(results.publish(receivers.url("/gone"), 2))

    def disabled(seen: Sequence[Received]) -> bool:
        attempts = [events_pb2.TaskEvent.FromString(r.value or b"") for r in seen if r.key_text in later]
        return {
            a.task_id
            for a in attempts
            if a.callback_attempt.outcome == callback_pb2.CALLBACK_OUTCOME_DISABLED
        } == later

    read_topic(bootstrap, REGISTRY.name(TopicKey.EVENTS), disabled, timeout=60)
    assert len(receivers.requests_to("/gone")) == 1  # nothing was sent after the 410

    def dead_lettered(seen: Sequence[Received]) -> bool:
        return any(down.encode() in (r.value or b"") for r in seen)

    records = read_topic(bootstrap, REGISTRY.name(TopicKey.DEAD_LETTER), dead_lettered, timeout=120)
    record = next(r for r in records if down.encode() in (r.value or b""))
    assert "gave up after" in (record.header(DEAD_LETTER_REASON_HEADER) or "")
    attempts = int(pipeline.state.overrides["IMGPIPE_CALLBACK_MAX_ATTEMPTS"])
    assert len(receivers.requests_to("/down")) == attempts


@pytest.mark.timeout(300)
def test_a_malformed_command_is_dead_lettered_and_its_url_still_gets_its_callbacks(
    pipeline: LocalPipeline, receivers: Receivers, results: Results
) -> None:
    url = receivers.url("/after-poison")
    requests_topic = REGISTRY.name(TopicKey.CALLBACK_REQUESTS)
    poison = Producer({"bootstrap.servers": pipeline.endpoints.kafka_bootstrap_servers})
    poison.produce(requests_topic, key=url.encode(), value=b"\xff not a CallbackCommand")
    assert poison.flush(30) == 0
    (task_id,) = results.publish(url, 1)

    all_arrived(receivers, "/after-poison", [task_id], timeout=60)

    def dead_lettered(seen: Sequence[Received]) -> bool:
        return any(r.key_text == url and r.header(ORIGIN_TOPIC_HEADER) == requests_topic for r in seen)

    records = read_topic(
        pipeline.endpoints.kafka_bootstrap_servers,
        REGISTRY.name(TopicKey.DEAD_LETTER),
        dead_lettered,
        timeout=60,
    )
    record = next(r for r in records if r.key_text == url and r.header(ORIGIN_TOPIC_HEADER) == requests_topic)
    assert "poison message" in (record.header(DEAD_LETTER_REASON_HEADER) or "")


def test_a_real_task_calls_back_and_the_api_shows_every_attempt(
    pipeline: LocalPipeline, receivers: Receivers, api: ApiClient
) -> None:
    receivers.behave("/flaky", Behavior(status=500))
    task_id = api.submit(TaskRequest("watercolor", image=photo_jpeg(), callback_url=receivers.url("/flaky")))[
        "id"
    ]
    wait_until(lambda: len(receivers.requests_to("/flaky")) >= 2, 120, "two failed attempts")
    receivers.behave("/flaky", Behavior(status=200))

    def delivered() -> dict[str, Any] | None:
        view = api.get(task_id)
        return view if view["callback"]["status"] == "delivered" else None

    view = wait_until(delivered, 60, "the callback to be recorded as delivered")
    attempts = view["callback"]["attempts"]
    assert [a["outcome"] for a in attempts][-1] == "delivered"
    assert sum(1 for a in attempts if a["outcome"] == "retrying" and a["status_code"] == 500) >= 2
    assert len({a["webhook_id"] for a in attempts}) == 1  # the same id on every retry
    body = receivers.requests_to("/flaky")[-1].json()
    assert (
        body["task_id"] == task_id and body["state"] == "succeeded" and body["result_url"].startswith("http")
    )
