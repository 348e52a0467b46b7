"""RFC 7807 problem+json errors for the HTTP API."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import StatementError
from starlette.exceptions import HTTPException as StarletteHTTPException

from imgpipe.store import errors as store_errors

PROBLEM_CONTENT_TYPE = "application/problem+json"


class Problem(Exception):
    """An error the API reports as problem+json; `code` is a stable machine-readable name."""

    def __init__(
        self,
        status: int,
        code: str,
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


def problem_response(
    status: int,
    code: str,
    detail: str,
    instance: str,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    body = {
        "type": f"https://imgpipe.dev/problems/{code}",
        "title": code.replace("_", " "),
        "status": status,
        "detail": detail,
        "instance": instance,
        "code": code,
        **extensions,
    }
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_CONTENT_TYPE)


def invalid_request(instance: str, errors: list[dict[str, str]]) -> JSONResponse:
    """The one shape of a request that does not validate (schema, JSON syntax, encoding): 422."""
    return problem_response(
        422, "invalid_request", "the request does not match the schema", instance, errors=errors
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
        code = "not_found" if exc.status_code == 404 else f"http_{exc.status_code}"
        return problem_response(exc.status_code, code, str(exc.detail), request.url.path)

    async def on_database(request: Request, exc: Exception) -> JSONResponse:
        # Requests are validated so the store can hold them; this is the net under that (store/errors.py).
        assert isinstance(exc, StatementError)
        reason = store_errors.describe(exc)
        if store_errors.is_permanent(exc):
            return problem_response(
                422, "unstorable_request", f"the task store refused the request: {reason}", request.url.path
            )
        return problem_response(
            503, "unavailable", f"the task store failed: {reason}", request.url.path, {"Retry-After": "1"}
        )

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(StatementError, on_database)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
