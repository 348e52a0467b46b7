"""The HTTP API's OpenAPI document: built from the routes, committed as schemas/openapi.json.

    imgpipe openapi           # (re)write schemas/openapi.json
    imgpipe openapi --check   # exit 1 when the committed file differs from what the code declares

Clients are generated from the committed file (tests/integration/test_openapi_client.py does, with
openapi-python-client), so it must say exactly what the API answers: tests/unit/test_openapi.py fails
when it is stale, and schemathesis checks the running API against it.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from imgpipe.contracts.registry import schemas_dir
from imgpipe.ingest.problems import problem_media_types

if TYPE_CHECKING:
    from imgpipe.ingest.api import ApiDependencies

OPENAPI_FILE = "openapi.json"


def install_openapi(app: FastAPI) -> None:
    """Serve the document the committed file holds: FastAPI's, with problem+json error bodies."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = problem_media_types(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    description=app.description,
                    routes=app.routes,
                    tags=app.openapi_tags,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to customize


def document() -> dict[str, Any]:
    from imgpipe.ingest.api import create_app

    # Routes read their dependencies per request only, so none are needed to describe them.
    return create_app(cast("ApiDependencies", None)).openapi()


def render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def committed_path() -> Path:
    return schemas_dir() / OPENAPI_FILE


def stale_diff(path: Path | None = None) -> str:
    """A unified diff from the committed document to the current one; empty when up to date."""
    path = path or committed_path()
    old = path.read_text() if path.exists() else ""
    new = render(document())
    return "".join(
        difflib.unified_diff(old.splitlines(True), new.splitlines(True), str(path), "generated", n=1)
    )


def openapi_command(args: argparse.Namespace) -> int:
    path = Path(args.output) if args.output else committed_path()
    if args.check:
        diff = stale_diff(path)
        if diff:
            print(diff[:20_000], end="")
            print(f"{path} is stale: run `make openapi`", file=sys.stderr)
            return 1
        print(f"{path} is up to date")
        return 0
    path.write_text(render(document()))
    print(f"wrote {path}")
    return 0
