"""Request bodies are bounded and JSON before a route reads them (an ASGI middleware).

A body over the cap is a 413 from its Content-Length, before anything is read, or as soon as a
streamed (chunked) body passes the cap, so at most the cap is ever held in memory. A body whose
Content-Type is not JSON is a 415; one that is not UTF-8 a 422 shaped like every other invalid
request (FastAPI would answer a plain 400). A missing Content-Type is taken as JSON, as FastAPI does.
"""

from __future__ import annotations

import email.message

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imgpipe.ingest.problems import ProblemCode, invalid_request, problem_response

_BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})


def is_json_content_type(value: str) -> bool:
    """application/json or application/<anything>+json, with UTF-8 (or no) charset."""
    message = email.message.Message()
    message["content-type"] = value
    subtype = message.get_content_subtype()
    charset = message.get_param("charset")
    return (
        message.get_content_maintype() == "application"
        and (subtype == "json" or subtype.endswith("+json"))
        and (charset is None or str(charset).lower() in ("utf-8", "utf8"))
    )


class BoundedJsonBodies:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self._app = app
        self._max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in _BODYLESS_METHODS:
            await self._app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        path = scope["path"]
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._max_bytes:
            await self._too_large(path, scope, receive, send)
            return

        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away; nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._max_bytes:
                await self._too_large(path, scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)

        content_type = headers.get("content-type")
        if body and content_type is not None and not is_json_content_type(content_type):
            await problem_response(
                415, ProblemCode.UNSUPPORTED_MEDIA_TYPE, f"send application/json, not {content_type}", path
            )(scope, receive, send)
            return
        if body:
            try:
                body.decode("utf-8")
            except UnicodeDecodeError as exc:
                detail = f"the body is not UTF-8: {exc.reason} at byte {exc.start}"
                await invalid_request(path, [{"location": "body", "message": detail}])(scope, receive, send)
                return

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as the server's would

        await self._app(scope, replay, send)

    async def _too_large(self, path: str, scope: Scope, receive: Receive, send: Send) -> None:
        await problem_response(
            413,
            ProblemCode.REQUEST_TOO_LARGE,
            f"the request body is over {self._max_bytes} bytes",
            path,
            # Unread body bytes may follow on this connection: the server closes it after answering.
            {"Connection": "close"},
        )(scope, receive, send)
