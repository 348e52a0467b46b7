"""A small client of imgpipe's two front doors, the HTTP API and the submit topic.

Used by `imgpipe demo`, the end-to-end tests and the benchmark; a model of how producers use them.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from confluent_kafka import Producer

from imgpipe.contracts.payloads import CONTENT_TYPE_HEADER, JSON_CONTENT_TYPE
from imgpipe.ingest.accept import task_id_for

TERMINAL_STATES = frozenset({"succeeded", "failed", "canceled"})


class ApiError(Exception):
    def __init__(self, status: int, problem: Mapping[str, Any]) -> None:
        super().__init__(f"HTTP {status}: {problem.get('title')}: {problem.get('detail')}")
        self.status = status
        self.problem = problem


@dataclass(frozen=True)
class TaskRequest:
    prompt: str
    image: bytes | None = None  # sent inline, base64
    image_url: str | None = None
    idempotency_key: str | None = None
    callback_url: str | None = None
    metadata: Mapping[str, str] | None = None
    time_limit_seconds: float | None = None

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"prompt": self.prompt}
        if self.image is not None:
            body["image_base64"] = base64.b64encode(self.image).decode()
        if self.image_url is not None:
            body["image_url"] = self.image_url
        if self.callback_url is not None:
            body["callback_url"] = self.callback_url
        if self.metadata:
            body["metadata"] = dict(self.metadata)
        if self.time_limit_seconds is not None:
            body["time_limit_seconds"] = self.time_limit_seconds
        return body


class ApiClient:
    def __init__(self, base_url: str, api_key: str, timeout: float = 30.0) -> None:
        self._http = httpx.Client(
            base_url=base_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout
        )

    def close(self) -> None:
        self._http.close()

    def submit(self, request: TaskRequest) -> dict[str, Any]:
        headers = {"Idempotency-Key": request.idempotency_key} if request.idempotency_key else {}
        return self._json(self._http.post("/v1/tasks", json=request.body(), headers=headers))

    def get(self, task_id: str, wait_seconds: float = 0) -> dict[str, Any]:
        headers = {"Prefer": f"wait={wait_seconds:g}"} if wait_seconds else {}
        # The server holds the request up to `wait_seconds`: give the socket that much more.
        response = self._http.get(f"/v1/tasks/{task_id}", headers=headers, timeout=wait_seconds + 30)
        return self._json(response)

    def list(self, **filters: str | int) -> list[dict[str, Any]]:
        """Every task matching the filters (state, created_after, ...), following the pages."""
        tasks: list[dict[str, Any]] = []
        params: dict[str, str | int] = dict(filters)
        while True:
            page = self._json(self._http.get("/v1/tasks", params=params))
            tasks.extend(page["tasks"])
            if not page.get("next_page_token"):
                return tasks
            params["page_token"] = page["next_page_token"]

    def webhook_secrets(self) -> tuple[str, ...]:
        """The `whsec_` secrets this tenant's callbacks are signed with, current first."""
        return tuple(self._json(self._http.get("/v1/webhook-secret"))["secrets"])

    def cancel(self, task_id: str) -> dict[str, Any]:
        return self._json(self._http.post(f"/v1/tasks/{task_id}/cancel"))

    def wait(self, task_ids: Iterable[str], timeout: float) -> dict[str, dict[str, Any]]:
        """Each task's view once all are terminal; TimeoutError naming the first straggler otherwise.

        An unknown id counts as not there yet: a task published to the submit topic exists only once
        ingest has consumed it."""
        deadline = time.monotonic() + timeout
        done: dict[str, dict[str, Any]] = {}
        for task_id in task_ids:
            while True:
                remaining = deadline - time.monotonic()
                try:
                    view = self.get(task_id, wait_seconds=max(0, min(20, int(remaining))))
                except ApiError as exc:
                    if exc.status != 404:
                        raise
                    view = {"state": "unknown", "stage": None}
                    # Polling: the API cannot hold a request for a task it does not know yet.
                    time.sleep(min(0.2, max(remaining, 0)))
                if view["state"] in TERMINAL_STATES:
                    done[task_id] = view
                    break
                if remaining <= 0:
                    raise TimeoutError(f"task {task_id} still {view['state']} at {view.get('stage')}")
        return done

    def _json(self, response: httpx.Response) -> dict[str, Any]:
        body: dict[str, Any] = response.json() if response.content else {}
        if response.status_code >= 400:
            raise ApiError(response.status_code, body)
        return body


class TopicSubmitter:
    """Publishes tasks to the submit topic as JSON, keyed by idempotency key, as external producers do."""

    def __init__(self, producer_config: Mapping[str, Any], topic: str, tenant_id: str) -> None:
        self._producer = Producer({**producer_config, "enable.idempotence": True, "linger.ms": 5})
        self._topic = topic
        self._tenant_id = tenant_id

    def submit(self, request: TaskRequest) -> str:
        """Publish one task; returns the id ingest will give it (derived from the idempotency key)."""
        key = request.idempotency_key or str(uuid.uuid4())
        value = {**request.body(), "tenant_id": self._tenant_id, "idempotency_key": key}
        self._producer.produce(
            self._topic,
            key=key.encode(),
            value=json.dumps(value).encode(),
            headers=[(CONTENT_TYPE_HEADER, JSON_CONTENT_TYPE.encode())],
        )
        self._producer.poll(0)
        return str(task_id_for(self._tenant_id, key))

    def flush(self, timeout: float = 30.0) -> None:
        if self._producer.flush(timeout) > 0:
            raise TimeoutError("submit topic: messages still undelivered")
