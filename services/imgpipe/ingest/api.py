"""The HTTP API (FastAPI): submit, batch submit, get (with Prefer: wait), cancel, list, the tenant's
webhook signing secrets, and the admin API (admin_api.py).

Errors are RFC 7807 problem+json. Every /v1 route needs a tenant API key (`Authorization: Bearer`
or `X-API-Key`), except /v1/admin, which needs the admin token; submits are limited per tenant by
token buckets, the batch route by its own, stricter one, answering 429 with Retry-After.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import math
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from fastapi import Depends, FastAPI, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from sqlalchemy import and_, or_, select, text
from sqlalchemy.orm import Session, sessionmaker

from imgpipe.ingest.accept import (
    IdempotencyConflict,
    ImageTooLarge,
    NewTask,
    TaskAcceptor,
    batch_item_id,
)
from imgpipe.ingest.admin_api import admin_router
from imgpipe.ingest.bodies import BoundedJsonBodies
from imgpipe.ingest.callback_admin import CallbackAdmin
from imgpipe.ingest.models import (
    BatchView,
    CallbackAttemptView,
    CallbackView,
    DateTimeQuery,
    IdempotencyKey,
    SubmitBatch,
    SubmitTask,
    SubmitTaskBody,
    TaskErrorView,
    TaskPage,
    TaskView,
    WebhookSecrets,
)
from imgpipe.ingest.openapi import install_openapi
from imgpipe.ingest.problems import Problem, ProblemCode, install_problem_handlers, problem_responses
from imgpipe.ingest.settings import IngestSettings
from imgpipe.ingest.tenants import ApiKeyAuthenticator, TenantLimits
from imgpipe.ingest.terminate import request_cancel
from imgpipe.objects import ObjectStore
from imgpipe.ratelimit import KeyedLimiter
from imgpipe.runtime.deadletters import DeadLetters
from imgpipe.store.models import CallbackAttempt, CallbackOutcome, Task, TaskState

REQUESTS = Counter("imgpipe_api_submits_total", "Task submissions by route and outcome", ["route", "outcome"])
WAIT_SECONDS = Histogram("imgpipe_api_prefer_wait_seconds", "Time GET /v1/tasks/{id} held for Prefer: wait")
MAX_ATTEMPTS_SHOWN = 50


@dataclass(frozen=True)
class ApiDependencies:
    settings: IngestSettings
    sessions: sessionmaker[Session]
    objects: ObjectStore
    acceptor: TaskAcceptor
    authenticator: ApiKeyAuthenticator
    limiter: KeyedLimiter
    result_topic: str
    # Policies and replays for /v1/admin; None (or no admin token) turns the admin API off.
    callback_admin: CallbackAdmin | None = None
    # The dead-letter topic for /v1/admin/dead-letters; None turns those routes off (404).
    dead_letters: DeadLetters | None = None


def create_app(deps: ApiDependencies) -> FastAPI:  # noqa: C901 (routes as closures; issue 16 item 3 moves them to routers)
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if deps.callback_admin is not None:
            deps.callback_admin.close()
        if deps.dead_letters is not None:
            deps.dead_letters.close()

    app = FastAPI(
        lifespan=lifespan,
        title="imgpipe",
        version="1",
        description="Submit AI image edits (detect a pet, restyle from a prompt, remove the background).",
    )
    app.state.deps = deps
    install_problem_handlers(app)
    install_openapi(app)
    # openapi.document() renders the routes alone, without dependencies: no body cap to install then.
    if getattr(deps, "settings", None) is not None:
        app.add_middleware(BoundedJsonBodies, max_bytes=deps.settings.max_request_bytes)
    app.include_router(admin_router())

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        # A route rather than a mounted app: a mount answers /metrics with a redirect to /metrics/.
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    def limit(bucket: str, rate: float, burst: float) -> None:
        wait = deps.limiter.try_acquire(bucket, rate, burst)
        if wait > 0:
            REQUESTS.labels(bucket.rsplit(":", 1)[-1], "rate_limited").inc()
            raise Problem(
                429,
                ProblemCode.RATE_LIMITED,
                f"rate limit of {rate:g}/s exceeded",
                {"Retry-After": str(max(1, math.ceil(wait)))},
            )

    def view(task: Task, attempts: list[CallbackAttemptView] | None = None) -> TaskView:
        return task_view(task, deps.objects, deps.settings.result_url_ttl_seconds, attempts)

    def accept_one(
        tenant_id: str, new: NewTask, batch_id: uuid.UUID | None = None, task_id: uuid.UUID | None = None
    ) -> tuple[Task, bool]:
        try:
            return deps.acceptor.accept(tenant_id, new, batch_id, task_id)
        except ImageTooLarge as exc:
            raise Problem(413, ProblemCode.IMAGE_TOO_LARGE, str(exc)) from None
        except IdempotencyConflict as exc:
            raise conflict(exc) from None

    @app.post(
        "/v1/tasks",
        status_code=202,
        response_model=TaskView,
        tags=["tasks"],
        operation_id="submit_task",
        responses={
            202: {"description": "Accepted: a new task", "headers": LOCATION},
            200: {
                "model": TaskView,
                "description": "The task this Idempotency-Key made",
                "headers": LOCATION,
            },
            **problem_responses(400, 401, 409, 413, 415, 422, 429, 503),
        },
    )
    def submit_task(
        body: SubmitTaskBody,
        limits: TenantDep,
        response: Response,
        idempotency_key: Annotated[IdempotencyKey | None, Header()] = None,
    ) -> TaskView:
        """Submit one task. A repeated Idempotency-Key returns the task it first created (200) when the
        request is the same, and is a 409 `idempotency_conflict` naming that task when it is not."""
        limit(f"{limits.tenant_id}:submit", limits.rate_per_second, limits.burst)
        task, created = accept_one(limits.tenant_id, new_task(body, idempotency_key))
        response.status_code = 202 if created else 200
        response.headers["Location"] = f"/v1/tasks/{task.id}"
        REQUESTS.labels("submit", "accepted" if created else "duplicate").inc()
        return view(task)

    @app.post(
        "/v1/tasks:batch",
        status_code=202,
        response_model=BatchView,
        tags=["tasks"],
        operation_id="submit_batch",
        responses={
            200: {"model": BatchView, "description": "The batch this Idempotency-Key made"},
            **problem_responses(400, 401, 409, 413, 415, 422, 429, 503),
        },
    )
    def submit_batch(
        body: SubmitBatch,
        limits: TenantDep,
        response: Response,
        idempotency_key: Annotated[IdempotencyKey | None, Header()] = None,
    ) -> BatchView:
        """Submit many tasks sharing one callback URL, as the old batch endpoint did. With an
        Idempotency-Key the whole batch is idempotent: a replay answers 200 with the same tasks."""
        if len(body.tasks) > deps.settings.max_batch_tasks:
            raise Problem(
                413, ProblemCode.BATCH_TOO_LARGE, f"at most {deps.settings.max_batch_tasks} tasks per batch"
            )
        limit(f"{limits.tenant_id}:batch", limits.batch_rate_per_second, limits.batch_burst)
        items = [batch_task(body, index) for index in range(len(body.tasks))]
        reject_duplicate_keys(items)
        for index, new in enumerate(items):  # refused before any task is written
            try:
                deps.acceptor.check_size(new)
            except ImageTooLarge as exc:
                raise Problem(413, ProblemCode.IMAGE_TOO_LARGE, f"tasks[{index}]: {exc}") from None
        created = True
        if idempotency_key is None:
            batch_id = uuid.uuid4()
        else:
            try:
                batch_id, created = deps.acceptor.open_batch(limits.tenant_id, idempotency_key, items)
            except IdempotencyConflict as exc:
                raise conflict(exc) from None
        tasks = []
        for index, new in enumerate(items):
            keyless_id = (
                batch_item_id(batch_id, index) if idempotency_key and not new.idempotency_key else None
            )
            task, _ = accept_one(limits.tenant_id, new, batch_id, keyless_id)
            tasks.append(view(task))
        response.status_code = 202 if created else 200
        REQUESTS.labels("batch", "accepted" if created else "duplicate").inc()
        return BatchView(batch_id=batch_id, tasks=tasks)

    @app.get(
        "/v1/tasks/{task_id}",
        response_model=TaskView,
        tags=["tasks"],
        operation_id="get_task",
        responses=problem_responses(401, 404, 422),
    )
    async def get_task(
        task_id: uuid.UUID, limits: TenantDep, prefer: Annotated[str | None, Header()] = None
    ) -> TaskView:
        """One task, with its callback delivery attempts. `Prefer: wait=N` holds the answer until the
        task ends or N seconds pass."""
        wait = min(prefer_wait_seconds(prefer), deps.settings.prefer_wait_max_seconds)
        deadline = time.monotonic() + wait
        interval = 0.05
        with WAIT_SECONDS.time():
            while True:
                task = await run_in_threadpool(load_task, deps.sessions, limits.tenant_id, task_id)
                if task.state.is_terminal or time.monotonic() >= deadline:
                    attempts = await run_in_threadpool(load_attempts, deps.sessions, task.id)
                    return view(task, attempts)
                # Polling with backoff keeps the API stateless; a task ends at most once.
                await asyncio.sleep(min(interval, max(0.0, deadline - time.monotonic())))
                interval = min(interval * 2, 1.0)

    @app.post(
        "/v1/tasks/{task_id}/cancel",
        status_code=202,
        response_model=TaskView,
        tags=["tasks"],
        operation_id="cancel_task",
        responses=problem_responses(401, 404, 409, 422),
    )
    def cancel_task(task_id: uuid.UUID, limits: TenantDep) -> TaskView:
        """Cancel a task; stages honour it at their next boundary. A finished task is a 409."""
        task = request_cancel(deps.sessions, deps.result_topic, limits.tenant_id, task_id)
        if task is None:
            raise Problem(404, ProblemCode.NOT_FOUND, f"no task {task_id}")
        if task.state is not TaskState.CANCELED:
            raise Problem(
                409, ProblemCode.ALREADY_FINISHED, f"task {task_id} already ended as {task.state.value}"
            )
        return view(task)

    @app.get(
        "/v1/tasks",
        response_model=TaskPage,
        tags=["tasks"],
        operation_id="list_tasks",
        responses=problem_responses(400, 401, 422),
    )
    def list_tasks(
        limits: TenantDep,
        state: TaskState | None = None,
        created_after: DateTimeQuery | None = None,
        created_before: DateTimeQuery | None = None,
        page_size: Annotated[int, Query(ge=1, le=200)] = 50,
        page_token: str | None = None,
        idempotency_key: IdempotencyKey | None = None,
    ) -> TaskPage:
        """The tenant's tasks, newest first, filtered by state, creation time and idempotency key."""
        query = select(Task).where(Task.tenant_id == limits.tenant_id)
        if idempotency_key is not None:
            query = query.where(Task.idempotency_key == idempotency_key)
        if state is not None:
            query = query.where(Task.state == state)
        if created_after is not None:
            query = query.where(Task.created_at >= created_after)
        if created_before is not None:
            query = query.where(Task.created_at < created_before)
        if page_token:
            cursor_time, cursor_id = decode_page_token(page_token)
            query = query.where(
                or_(Task.created_at < cursor_time, and_(Task.created_at == cursor_time, Task.id < cursor_id))
            )
        query = query.order_by(Task.created_at.desc(), Task.id.desc()).limit(page_size + 1)
        with deps.sessions() as session:
            tasks = list(session.scalars(query))
        next_token = encode_page_token(tasks[page_size - 1]) if len(tasks) > page_size else None
        return TaskPage(tasks=[view(task) for task in tasks[:page_size]], next_page_token=next_token)

    @app.get(
        "/v1/webhook-secret",
        response_model=WebhookSecrets,
        tags=["webhooks"],
        operation_id="get_webhook_secrets",
        responses=problem_responses(401, 404, 422),
    )
    def webhook_secret(limits: TenantDep) -> WebhookSecrets:
        """The secrets this tenant's callbacks are signed with (Standard Webhooks), current first."""
        master_keys = deps.settings.webhook_master_keys()
        if not master_keys:
            raise Problem(404, ProblemCode.NOT_FOUND, "webhooks not configured")
        # Imported here: the callback package is not needed by anything else the API serves.
        from imgpipe.callback.signing import WebhookSigner

        return WebhookSecrets(secrets=WebhookSigner(master_keys).secrets_for(limits.tenant_id))

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, bool]:
        return {"live": True}

    @app.get("/readyz", include_in_schema=False)
    def readyz(response: Response) -> dict[str, dict[str, bool]]:
        checks = {"postgres": database_reachable(deps.sessions), "s3": deps.objects.is_reachable()}
        response.status_code = 200 if all(checks.values()) else 503
        return {"checks": checks}

    @app.middleware("http")
    async def no_store(request: Request, call_next):  # type: ignore[no-untyped-def]
        response = await call_next(request)
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    return app


# The two ways to present an API key, declared as the document's securitySchemes; either will do.
BEARER = HTTPBearer(auto_error=False, scheme_name="bearer", description="`Authorization: Bearer <API key>`")
API_KEY = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="apiKey")
LOCATION = {"Location": {"description": "The task's URL", "schema": {"type": "string"}}}


def authenticated_tenant(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
    x_api_key: Annotated[str | None, Depends(API_KEY)],
) -> TenantLimits:
    """The tenant whose API key the request carries (`Authorization: Bearer` or `X-API-Key`)."""
    deps: ApiDependencies = request.app.state.deps
    api_key = bearer.credentials.strip() if bearer is not None else x_api_key
    limits = deps.authenticator.authenticate(api_key) if api_key else None
    if limits is None:
        raise Problem(
            401, ProblemCode.UNAUTHENTICATED, "a valid API key is required", {"WWW-Authenticate": "Bearer"}
        )
    return limits


TenantDep = Annotated[TenantLimits, Depends(authenticated_tenant)]


def new_task(body: SubmitTask, idempotency_key: str | None, location: str = "body") -> NewTask:
    try:
        image_bytes = body.inline_bytes()
    except ValueError as exc:
        raise Problem(
            422,
            ProblemCode.INVALID_REQUEST,
            str(exc),
            errors=[{"location": f"{location}.image_base64", "message": str(exc)}],
        ) from None
    return NewTask.from_submission(body, image_bytes, idempotency_key)


def batch_task(body: SubmitBatch, index: int) -> NewTask:
    item = body.tasks[index]
    single = SubmitTask(
        prompt=item.prompt,
        image_url=item.image_url,
        image_base64=item.image_base64,
        metadata=item.metadata,
        callback_url=body.callback_url,
        callback_mode=body.callback_mode,
        include_inline_result=body.include_inline_result,
    )
    return new_task(single, item.idempotency_key, f"body.tasks.{index}")


def reject_duplicate_keys(items: list[NewTask]) -> None:
    """Two items of one batch with one idempotency key would silently become one task: a 422."""
    by_key: dict[str, list[int]] = {}
    for index, new in enumerate(items):
        if new.idempotency_key is not None:
            by_key.setdefault(new.idempotency_key, []).append(index)
    repeated = {key: indexes for key, indexes in by_key.items() if len(indexes) > 1}
    if repeated:
        raise Problem(
            422,
            ProblemCode.DUPLICATE_IDEMPOTENCY_KEY,
            "items of one batch share an idempotency key: "
            + "; ".join(f"{key!r} in tasks {indexes}" for key, indexes in repeated.items()),
            errors=[
                {"location": f"body.tasks.{index}.idempotency_key", "message": f"repeats {key!r}"}
                for key, indexes in repeated.items()
                for index in indexes
            ],
        )


def conflict(exc: IdempotencyConflict) -> Problem:
    if exc.kind == "batch":
        return Problem(409, ProblemCode.IDEMPOTENCY_CONFLICT, str(exc), batch_id=str(exc.original))
    return Problem(409, ProblemCode.IDEMPOTENCY_CONFLICT, str(exc), task_id=str(exc.original))


def load_task(sessions: sessionmaker[Session], tenant_id: str, task_id: uuid.UUID) -> Task:
    with sessions() as session:
        task = session.scalars(
            select(Task).where(Task.id == task_id, Task.tenant_id == tenant_id)
        ).one_or_none()
    if task is None:
        raise Problem(404, ProblemCode.NOT_FOUND, f"no task {task_id}")
    return task


def load_attempts(sessions: sessionmaker[Session], task_id: uuid.UUID) -> list[CallbackAttemptView]:
    """The task's last MAX_ATTEMPTS_SHOWN callback attempts, oldest first."""
    with sessions() as session:
        rows = session.scalars(
            select(CallbackAttempt)
            .where(CallbackAttempt.task_id == task_id)
            .order_by(CallbackAttempt.attempted_at.desc(), CallbackAttempt.id.desc())
            .limit(MAX_ATTEMPTS_SHOWN)
        ).all()
    return [
        CallbackAttemptView(
            webhook_id=row.webhook_id,
            attempt=row.attempt,
            attempted_at=row.attempted_at,
            status_code=row.status_code,
            latency_ms=row.latency_ms,
            error=row.error,
            outcome=CallbackOutcome(row.outcome),
            next_attempt_at=row.next_attempt_at,
        )
        for row in reversed(rows)
    ]


def task_view(
    task: Task,
    objects: ObjectStore,
    url_ttl_seconds: int,
    attempts: list[CallbackAttemptView] | None = None,
) -> TaskView:
    result_url = None
    if task.state is TaskState.SUCCEEDED and task.result_object_key:
        result_url = objects.presigned_get_url(task.result_object_key, url_ttl_seconds)
    return TaskView(
        id=task.id,
        state=task.state,
        stage=task.stage,
        progress=task.progress,
        prompt=task.prompt,
        error=TaskErrorView(code=task.error_code, message=task.error_message or "")
        if task.error_code
        else None,
        created_at=task.created_at,
        started_at=task.started_at,
        completed_at=task.completed_at,
        processing_ms=task.processing_ms,
        result_url=result_url,
        callback=CallbackView(
            url=task.callback_url,
            mode=task.callback_mode,  # type: ignore[arg-type]
            status=task.callback_status,
            attempts=attempts,
        ),
        metadata=task.metadata_,
        batch_id=task.batch_id,
    )


def prefer_wait_seconds(prefer: str | None) -> float:
    """`Prefer: wait=N` (RFC 7240); anything else means do not wait."""
    for preference in (prefer or "").split(","):
        name, _, value = preference.strip().partition("=")
        if name.strip().lower() == "wait":
            try:
                return max(0.0, float(value.strip()))
            except ValueError:
                return 0.0
    return 0.0


def encode_page_token(task: Task) -> str:
    return base64.urlsafe_b64encode(f"{task.created_at.isoformat()}|{task.id}".encode()).decode()


def decode_page_token(token: str) -> tuple[datetime, uuid.UUID]:
    try:
        created_at, task_id = base64.urlsafe_b64decode(token.encode()).decode().split("|")
        return datetime.fromisoformat(created_at), uuid.UUID(task_id)
    except (ValueError, binascii.Error):
        raise Problem(400, ProblemCode.INVALID_PAGE_TOKEN, "page_token is not one this API issued") from None


def database_reachable(sessions: sessionmaker[Session]) -> bool:
    try:
        with sessions() as session:
            session.execute(text("SELECT 1"))
    except Exception:
        return False
    return True
