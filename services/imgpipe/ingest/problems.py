"""RFC 7807 problem+json errors for the HTTP API, and their declaration in the OpenAPI document."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import StatementError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route

from imgpipe.ingest.problem_codes import ProblemCode as ProblemCode  # re-exported: the API's handlers use it
from imgpipe.runtime.errors import TransientError
from imgpipe.store import errors as store_errors

PROBLEM_CONTENT_TYPE = "application/problem+json"


class Problem(Exception):
    """An error the API reports as problem+json; `code` is a stable machine-readable name."""

    def __init__(
        self,
        status: int,
        code: ProblemCode,
        detail: str,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers or {}
        self.extensions = extensions


class FieldError(BaseModel):
    location: str = Field(description="Where in the request, e.g. `body.prompt` or `header.prefer`.")
    message: str


class ProblemDetails(BaseModel):
    """An RFC 7807 problem. Extensions beyond these members may appear (e.g. `task_id`)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="https://imgpipe.dev/problems/{code}")
    title: str
    status: int
    detail: str
    instance: str = Field(description="The request path.")
    code: ProblemCode
    errors: list[FieldError] | None = Field(default=None, description="With invalid_request: each error.")


STATUS_DESCRIPTIONS = {
    400: "Malformed request (body, page token)",
    401: "No valid credentials",
    403: "Credentials without access to this",
    404: "No such resource (or the feature is not enabled)",
    409: "Conflicts with the resource's state",
    413: "Request, image or batch too large",
    415: "Unsupported Content-Type",
    422: "The request does not match the schema",
    429: "Rate limited; retry after `Retry-After` seconds",
    503: "A dependency is unavailable; retry after `Retry-After` seconds",
}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each status with the problem+json body (and Retry-After for 429)."""
    return {
        status: {
            "model": ProblemDetails,
            "description": STATUS_DESCRIPTIONS[status],
            **({"headers": _RETRY_AFTER} if status == 429 else {}),
        }
        for status in statuses
    }


def problem_media_types(openapi: dict[str, Any]) -> dict[str, Any]:
    """FastAPI files every response model under application/json; errors are problem+json."""
    for path in openapi.get("paths", {}).values():
        for operation in path.values():
            for status, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                if status[:1] in "45" and "application/json" in content:
                    content[PROBLEM_CONTENT_TYPE] = content.pop("application/json")
    return openapi


def problem_response(
    status: int,
    code: ProblemCode,
    detail: str,
    instance: str,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    body = {
        "type": f"https://imgpipe.dev/problems/{code.value}",
        "title": code.value.replace("_", " "),
        "status": status,
        "detail": detail,
        "instance": instance,
        "code": code.value,
        **extensions,
    }
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_CONTENT_TYPE)


def allowed_methods(request: Request) -> str:
    """Every method some route of this path takes (Starlette names only the first route's)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.methods and route.matches(request.scope)[0] is not Match.NONE:
            methods |= route.methods
    return ", ".join(sorted(methods))


def invalid_request(instance: str, errors: list[dict[str, str]]) -> JSONResponse:
    """The one shape of a request that does not validate (schema, JSON syntax, encoding): 422."""
    return problem_response(
        422, ProblemCode.INVALID_REQUEST, "the request does not match the schema", instance, errors=errors
    )


def _printable(text: str) -> str:
    # Locations may hold a client's metadata key, lone surrogates included; the answer must encode.
    return text.encode("utf-8", "backslashreplace").decode()


def install_problem_handlers(app: FastAPI) -> None:
    async def on_problem(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Problem)
        return problem_response(
            exc.status, exc.code, exc.detail, request.url.path, exc.headers, **exc.extensions
        )

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {"location": _printable(".".join(str(part) for part in error["loc"])), "message": error["msg"]}
            for error in exc.errors()
        ]
        return invalid_request(request.url.path, errors)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        headers = dict(exc.headers or {})
        if exc.status_code == 404:
            code = ProblemCode.NOT_FOUND
        elif exc.status_code == 405:
            code = ProblemCode.METHOD_NOT_ALLOWED
            headers["Allow"] = allowed_methods(request)
        else:
            code = ProblemCode.HTTP_ERROR
        return problem_response(exc.status_code, code, str(exc.detail), request.url.path, headers)

    async def on_database(request: Request, exc: Exception) -> JSONResponse:
        # Requests are validated so the store can hold them; this is the net under that (store/errors.py).
        assert isinstance(exc, StatementError)
        reason = store_errors.describe(exc)
        if store_errors.is_permanent(exc):
            return problem_response(
                422,
                ProblemCode.UNSTORABLE_REQUEST,
                f"the task store refused the request: {reason}",
                request.url.path,
            )
        return problem_response(
            503,
            ProblemCode.UNAVAILABLE,
            f"the task store failed: {reason}",
            request.url.path,
            {"Retry-After": "1"},
        )

    async def on_dependency(request: Request, exc: Exception) -> JSONResponse:
        # A dependency other than the task store (the object store) failing: the request may succeed later.
        return problem_response(
            503, ProblemCode.UNAVAILABLE, str(exc), request.url.path, {"Retry-After": "5"}
        )

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(StatementError, on_database)
    app.add_exception_handler(TransientError, on_dependency)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
