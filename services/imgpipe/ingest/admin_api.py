"""The admin API (/v1/admin): callback policies and callback replays, for operators, not tenants.

Authenticated by one operator token (`IMGPIPE_ADMIN_TOKEN`, `Authorization: Bearer <token>`, compared
in constant time): none is a 401, a wrong one a 403. Without the setting every admin route is a 404.
Kafka calls block, so the handlers run in the thread pool (FastAPI does that for `def` routes).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from imgpipe.ingest.callback_admin import CallbackAdmin, KafkaUnavailable, PolicyKeyError, ReplayRefused
from imgpipe.ingest.models import (
    CallbackPolicyBody,
    CallbackPolicyList,
    CallbackPolicyView,
    ReplayRequest,
    ReplayView,
)
from imgpipe.ingest.problems import Problem, ProblemCode, problem_responses

if TYPE_CHECKING:
    from imgpipe.ingest.api import ApiDependencies


ADMIN_TOKEN = HTTPBearer(
    auto_error=False, scheme_name="adminToken", description="`Authorization: Bearer <IMGPIPE_ADMIN_TOKEN>`"
)
# Every admin route can answer these; routes add their own.
ADMIN_PROBLEMS = (401, 403, 404, 422, 503)


def authorized_admin(
    request: Request, bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(ADMIN_TOKEN)]
) -> CallbackAdmin:
    """The callback admin, for requests carrying the admin token."""
    deps: ApiDependencies = request.app.state.deps
    token = deps.settings.admin_token_value()
    if token is None or deps.callback_admin is None:
        raise Problem(404, ProblemCode.NOT_FOUND, "the admin API is not enabled")
    if bearer is None:
        raise Problem(
            401, ProblemCode.UNAUTHENTICATED, "the admin token is required", {"WWW-Authenticate": "Bearer"}
        )
    if not hmac.compare_digest(bearer.credentials.strip().encode(), token.encode()):
        raise Problem(403, ProblemCode.FORBIDDEN, "this token does not grant admin access")
    return deps.callback_admin


AdminDep = Annotated[CallbackAdmin, Depends(authorized_admin)]


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

    return router


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
