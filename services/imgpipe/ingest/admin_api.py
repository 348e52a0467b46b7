"""The admin API (/v1/admin): callback policies, callback replays and dead letters, for operators, not
tenants.

Authenticated by one operator token (`IMGPIPE_ADMIN_TOKEN`, `Authorization: Bearer <token>`, compared
in constant time): none is a 401, a wrong one a 403. Without the setting every admin route is a 404.
Kafka calls block, so the handlers run in the thread pool (FastAPI does that for `def` routes).
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, TypeVar

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from imgpipe.ingest.callback_admin import CallbackAdmin, KafkaUnavailable, PolicyKeyError, ReplayRefused
from imgpipe.ingest.models import (
    DEAD_LETTER_ID_PATTERN,
    CallbackPolicyBody,
    CallbackPolicyList,
    CallbackPolicyView,
    DateTimeQuery,
    DeadLetterDetail,
    DeadLetterList,
    DeadLetterReplayRequest,
    DeadLetterReplayView,
    DeadLetterView,
    ReplayDeadLetterIds,
    ReplayedDeadLetter,
    ReplayRequest,
    ReplayView,
)
from imgpipe.ingest.problems import Problem, ProblemCode, problem_responses
from imgpipe.runtime import deadletters
from imgpipe.runtime.deadletters import DeadLetter, DeadLetters, Selection

if TYPE_CHECKING:
    from imgpipe.ingest.api import ApiDependencies


ADMIN_TOKEN = HTTPBearer(
    auto_error=False, scheme_name="adminToken", description="`Authorization: Bearer <IMGPIPE_ADMIN_TOKEN>`"
)
PartT = TypeVar("PartT")
# Every admin route can answer these; routes add their own.
ADMIN_PROBLEMS = (401, 403, 404, 422, 503)


def _admin_deps(request: Request, bearer: HTTPAuthorizationCredentials | None) -> ApiDependencies:
    """The app's dependencies, for requests carrying the admin token."""
    deps: ApiDependencies = request.app.state.deps
    token = deps.settings.admin_token_value()
    if token is None:
        raise Problem(404, ProblemCode.NOT_FOUND, "the admin API is not enabled")
    if bearer is None:
        raise Problem(
            401, ProblemCode.UNAUTHENTICATED, "the admin token is required", {"WWW-Authenticate": "Bearer"}
        )
    if not hmac.compare_digest(bearer.credentials.strip().encode(), token.encode()):
        raise Problem(403, ProblemCode.FORBIDDEN, "this token does not grant admin access")
    return deps


def _enabled(part: PartT | None, what: str) -> PartT:
    if part is None:
        raise Problem(404, ProblemCode.NOT_FOUND, f"{what} is not enabled")
    return part


def authorized_admin(
    request: Request, bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(ADMIN_TOKEN)]
) -> CallbackAdmin:
    """The callback admin, for requests carrying the admin token."""
    return _enabled(_admin_deps(request, bearer).callback_admin, "the admin API")


def authorized_dead_letters(
    request: Request, bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(ADMIN_TOKEN)]
) -> DeadLetters:
    """The dead-letter topic, for requests carrying the admin token."""
    return _enabled(_admin_deps(request, bearer).dead_letters, "the dead-letter admin API")


AdminDep = Annotated[CallbackAdmin, Depends(authorized_admin)]
DeadLettersDep = Annotated[DeadLetters, Depends(authorized_dead_letters)]


def admin_router() -> APIRouter:
    router = APIRouter(prefix="/v1/admin", tags=["admin"])

    @router.get(
        "/callback-policies",
        response_model=CallbackPolicyList,
        operation_id="list_callback_policies",
        responses=problem_responses(*ADMIN_PROBLEMS),
    )
    def list_policies(admin: AdminDep) -> CallbackPolicyList:
        """Every current policy, read from the compacted policy topic."""
        with admin_problems():
            return CallbackPolicyList(policies=admin.list_policies())

    @router.get(
        "/callback-policies/{key:path}",
        response_model=CallbackPolicyView,
        operation_id="get_callback_policy",
        responses=problem_responses(*ADMIN_PROBLEMS),
    )
    def get_policy(key: str, admin: AdminDep) -> CallbackPolicyView:
        """One policy. `key` is a URL-encoded callback URL or a host name."""
        with admin_problems():
            view = admin.get_policy(key)
        if view is None:
            raise Problem(404, ProblemCode.NOT_FOUND, f"no callback policy for {key!r}")
        return view

    @router.put(
        "/callback-policies/{key:path}",
        response_model=CallbackPolicyView,
        operation_id="put_callback_policy",
        responses=problem_responses(*ADMIN_PROBLEMS),
    )
    def put_policy(key: str, body: CallbackPolicyBody, admin: AdminDep) -> CallbackPolicyView:
        """Create or replace the policy of a callback URL (`scope: url`) or a host (`scope: host`).
        Answers once the broker has it; callback workers apply it as they read it."""
        with admin_problems():
            return admin.put_policy(key, body)

    @router.delete(
        "/callback-policies/{key:path}",
        status_code=204,
        response_class=Response,
        operation_id="delete_callback_policy",
        responses=problem_responses(*ADMIN_PROBLEMS),
    )
    def delete_policy(key: str, admin: AdminDep) -> Response:
        """Delete a policy (a tombstone on the topic); deleting a missing one also answers 204."""
        with admin_problems():
            admin.delete_policy(key)
        return Response(status_code=204)

    @router.post(
        "/callbacks:replay",
        response_model=ReplayView,
        operation_id="replay_callbacks",
        responses=problem_responses(400, *ADMIN_PROBLEMS, 409),
    )
    def replay(body: ReplayRequest, admin: AdminDep) -> ReplayView:
        """Send ended tasks' callbacks again, with a new webhook-id: one task by `task_id`, or a callback
        URL's tasks completed since `since` (only those whose callback failed, unless `only_failed` is
        false). At most `limit` tasks per request; `truncated` says when more matched."""
        with admin_problems():
            return admin.replay(body)

    @router.get(
        "/dead-letters",
        response_model=DeadLetterList,
        operation_id="list_dead_letters",
        responses=problem_responses(*ADMIN_PROBLEMS),
    )
    def list_dead_letters(
        dead_letters: DeadLettersDep,
        origin: Annotated[
            str | None, Query(description="Origin topic: its name, or its registry key (tasks-submit).")
        ] = None,
        reason: Annotated[
            str | None, Query(description="A substring of the reason (case-insensitive).")
        ] = None,
        since: Annotated[
            DateTimeQuery | None, Query(description="RFC 3339: dead-lettered at or after.")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = deadletters.DEFAULT_LIMIT,
    ) -> DeadLetterList:
        """Dead letters on the dead-letter topic, oldest first, with reason, origin and age: the topic
        read from its start to the end it had when the request began."""
        selection = Selection(origin=origin, reason=reason, since=_aware(since), limit=limit)
        with dead_letter_problems():
            listing = dead_letters.select(selection)
        now = datetime.now(UTC)
        return DeadLetterList(
            dead_letters=[DeadLetterView(**entry.summary(now)) for entry in listing.entries],
            truncated=listing.truncated,
            limit=limit,
        )

    @router.get(
        "/dead-letters/{dead_letter_id}",
        response_model=DeadLetterDetail,
        operation_id="get_dead_letter",
        responses=problem_responses(*ADMIN_PROBLEMS),
    )
    def get_dead_letter(
        dead_letter_id: Annotated[str, Path(pattern=DEAD_LETTER_ID_PATTERN)], dead_letters: DeadLettersDep
    ) -> DeadLetterDetail:
        """One dead letter by id (`<topic>:<partition>:<offset>`), with its headers and payload."""
        with dead_letter_problems():
            return dead_letter_detail(dead_letters.get(dead_letter_id))

    @router.post(
        "/dead-letters:replay",
        response_model=DeadLetterReplayView,
        operation_id="replay_dead_letters",
        responses=problem_responses(*ADMIN_PROBLEMS, 409),
    )
    def replay_dead_letters(
        body: DeadLetterReplayRequest, dead_letters: DeadLettersDep
    ) -> DeadLetterReplayView:
        """Produce dead letters again to their origin topic, as a first attempt, with the headers
        `imgpipe-replayed-from` (the dead letter's id) and `imgpipe-replay-count`. By `ids`, or by
        `origin` (narrowed by `reason` and `since`, at most `limit`, oldest first). An id naming no
        dead letter, or an entry whose origin is unknown, is a 409 whose `refused` says why for each;
        then nothing is sent. The dead letters stay on their topic."""
        with dead_letter_problems():
            if isinstance(body, ReplayDeadLetterIds):
                report = dead_letters.replay_ids(body.ids)
            else:
                report = dead_letters.replay_selection(
                    Selection(origin=body.origin, reason=body.reason, since=body.since, limit=body.limit)
                )
        return DeadLetterReplayView(
            replayed=[
                ReplayedDeadLetter(id=r.id, topic=r.topic, partition=r.partition, offset=r.offset)
                for r in report.replayed
            ],
            truncated=report.truncated,
        )

    return router


def dead_letter_detail(entry: DeadLetter) -> DeadLetterDetail:
    return DeadLetterDetail(
        **entry.summary(),
        headers={name: value.decode("utf-8", errors="replace") for name, value in entry.headers.items()},
        payload_base64=None if entry.value is None else base64.b64encode(entry.value).decode(),
    )


def _aware(moment: datetime | None) -> datetime | None:
    return moment if moment is None or moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@contextmanager
def dead_letter_problems() -> Iterator[None]:
    """A malformed id 422, an unknown one 404, a refused replay 409, Kafka trouble 503."""
    try:
        yield
    except deadletters.InvalidDeadLetterId as exc:
        raise Problem(422, ProblemCode.INVALID_REQUEST, str(exc)) from None
    except deadletters.DeadLetterNotFound as exc:
        raise Problem(404, ProblemCode.NOT_FOUND, str(exc)) from None
    except deadletters.ReplayRefused as refused:
        raise Problem(409, ProblemCode.NOT_REPLAYABLE, str(refused), refused=refused.refused) from None
    except deadletters.DeadLettersUnavailable as exc:
        raise Problem(503, ProblemCode.KAFKA_UNAVAILABLE, str(exc), {"Retry-After": "5"}) from None


@contextmanager
def admin_problems() -> Iterator[None]:
    """The admin's errors as problem+json: a bad key 422, a refused replay 404/409, Kafka trouble 503."""
    try:
        yield
    except PolicyKeyError as exc:
        raise Problem(422, ProblemCode.INVALID_REQUEST, str(exc)) from None
    except ReplayRefused as refused:
        raise Problem(refused.status, refused.code, refused.detail) from None
    except KafkaUnavailable as exc:
        raise Problem(503, ProblemCode.KAFKA_UNAVAILABLE, str(exc), {"Retry-After": "5"}) from None
