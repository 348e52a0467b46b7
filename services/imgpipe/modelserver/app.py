"""The model server's FastAPI app: the CPU backends behind the three HTTP protocols the stages speak.

- Open Inference Protocol v2 (KServe/Triton): GET /v2, /v2/health/live, /v2/health/ready,
  /v2/models/{name}, /v2/models/{name}/ready; POST /v2/models/{name}/infer runs the detector on one
  base64 image (input "image", BYTES [1]) and answers "boxes" FP32 [N,4], "scores" FP32 [N],
  "support" INT32 [N], "labels" BYTES [N]. Only `detect_model` exists; other names get 404.
  Errors: {"error": "..."}.
- OpenAI Images API: POST /v1/images/edits (multipart: image, prompt, model, n=1, size,
  response_format=b64_json) runs the stylizer; any `model` is accepted. With an `api_key`, requests
  need "Authorization: Bearer <key>". Errors: {"error": {"message", "type", "param", "code"}}.
- rembg's server: POST /api/remove (multipart: file, model, om; query: extras with a SAM rectangle
  prompt, used as the matte hint) runs the matter and answers image/png RGBA (om=true: the mask, L).
  Any `model` is accepted. Errors: {"detail": "..."}.
- GET /healthz for process supervisors.

With a `Simulation` (`--simulate`), every model call instead waits for one of the model's slots and
holds it for a fixed service time, and answers without model work (modelserver/simulated.py).

Inputs go through the stages' own loader (`load_image`, then `normalize`), so a bad image is a 4xx:
400 undecodable, 413 too large, 415 unsupported format. A backend's permanent `ModelError` is 422,
a retryable one 503; anything unexpected is a 500.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import re
import time
from typing import Annotated, Any, Final

from fastapi import FastAPI, File, Form, Header, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from PIL import Image
from starlette.concurrency import run_in_threadpool

from imgpipe.backends.rembg_matte import hint_from_extras
from imgpipe.imaging.detect import Box, Detection, HaarPetDetector, PetDetector
from imgpipe.imaging.errors import ImageTooLarge, ModelError, PipelineError, UnsupportedFormat
from imgpipe.imaging.generate import PillowStylizer, Stylizer
from imgpipe.imaging.matte import GrabCutMatter, Matter
from imgpipe.imaging.validate import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, encode_png, load_image, normalize
from imgpipe.modelserver.server import DEFAULT_DETECT_MODEL
from imgpipe.modelserver.simulated import Simulation

log = logging.getLogger(__name__)

SERVER_NAME: Final = "imgpipe-model-server"
_SIZE: Final = re.compile(r"^([1-9][0-9]{0,4})x([1-9][0-9]{0,4})$")


class ProtocolError(Exception):
    """A request the server refuses; rendered in the shape of the protocol its path belongs to."""

    def __init__(self, status: int, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


def _status_of(exc: PipelineError) -> int:
    if isinstance(exc, ModelError):
        return 503 if exc.retryable else 422
    if isinstance(exc, ImageTooLarge):
        return 413
    if isinstance(exc, UnsupportedFormat):
        return 415
    return 400


def _error_response(path: str, status: int, message: str, code: str | None = None) -> JSONResponse:
    if path.startswith("/v2"):
        return JSONResponse({"error": message}, status_code=status)
    if path.startswith("/v1"):
        kind = "invalid_request_error" if status < 500 else "server_error"
        body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
        return JSONResponse(body, status_code=status)
    return JSONResponse({"detail": message}, status_code=status)


def _flatten(data: object) -> list[object]:
    if not isinstance(data, list):
        return [data]
    return [leaf for item in data for leaf in _flatten(item)]


def _oip_image_bytes(payload: object) -> bytes:
    """The one base64 image of an OIP v2 infer request (input "image", or the only input)."""
    inputs = payload.get("inputs") if isinstance(payload, dict) else None
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError(400, "request has no 'inputs' list")
    named = [t for t in inputs if isinstance(t, dict) and t.get("name") == "image"]
    tensor = named[0] if named else inputs[0] if len(inputs) == 1 else None
    if not isinstance(tensor, dict):
        raise ProtocolError(400, "request has no input named 'image'")
    if tensor.get("datatype") != "BYTES":
        raise ProtocolError(400, f"input 'image' must be BYTES, not {tensor.get('datatype')!r}")
    data = _flatten(tensor.get("data"))
    if len(data) != 1 or not isinstance(data[0], str):
        raise ProtocolError(400, "input 'image' must hold exactly one base64 string (batch size 1)")
    try:
        return base64.b64decode(data[0], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError(400, f"input 'image' is not valid base64: {exc}") from exc


def _oip_outputs(detections: list[Detection]) -> list[dict[str, Any]]:
    count = len(detections)
    boxes = [float(v) for d in detections for v in (d.box.x, d.box.y, d.box.width, d.box.height)]
    return [
        {"name": "boxes", "datatype": "FP32", "shape": [count, 4], "data": boxes},
        {
            "name": "scores",
            "datatype": "FP32",
            "shape": [count],
            "data": [float(d.score) for d in detections],
        },
        {"name": "support", "datatype": "INT32", "shape": [count], "data": [d.support for d in detections]},
        {"name": "labels", "datatype": "BYTES", "shape": [count], "data": [d.label for d in detections]},
    ]


def _parse_size(size: str | None) -> tuple[int, int] | None:
    if size is None or size in ("", "auto"):
        return None
    match = _SIZE.match(size)
    if match is None:
        raise ProtocolError(400, f"size must be WIDTHxHEIGHT or auto, not {size!r}", code="invalid_size")
    return int(match[1]), int(match[2])


def create_app(  # noqa: C901 (routes as closures, as ingest/api.py (issue 16 item 3))
    *,
    detector: PetDetector | None = None,
    stylizer: Stylizer | None = None,
    matter: Matter | None = None,
    detect_model: str = DEFAULT_DETECT_MODEL,
    api_key: str | None = None,
    max_image_bytes: int = DEFAULT_MAX_BYTES,
    max_image_pixels: int = DEFAULT_MAX_PIXELS,
    simulation: Simulation | None = None,
) -> FastAPI:
    """The app; backends default to the CPU ones (HaarPetDetector, PillowStylizer, GrabCutMatter),
    or, with a `simulation`, to a simulated accelerator."""
    detector = detector or HaarPetDetector()
    stylizer = stylizer or PillowStylizer()
    matter = matter or GrabCutMatter()
    app = FastAPI(title=SERVER_NAME, docs_url=None, redoc_url=None, openapi_url=None)

    def load(data: bytes) -> Image.Image:
        return normalize(load_image(data, max_bytes=max_image_bytes, max_pixels=max_image_pixels))

    @app.exception_handler(ProtocolError)
    async def _protocol_error(request: Request, exc: ProtocolError) -> JSONResponse:
        return _error_response(request.url.path, exc.status, exc.message, exc.code)

    @app.exception_handler(PipelineError)
    async def _pipeline_error(request: Request, exc: PipelineError) -> JSONResponse:
        status = _status_of(exc)
        log.log(logging.ERROR if status >= 500 else logging.INFO, "%s: %s", request.url.path, exc)
        return _error_response(request.url.path, status, f"{exc.code}: {exc.message}", str(exc.code))

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error.get('loc', ()))}: {error.get('msg')}" for error in exc.errors()
        )
        # rembg (FastAPI) answers 422 to an invalid form; the other two protocols use 400.
        status = 422 if not request.url.path.startswith(("/v1", "/v2")) else 400
        return _error_response(request.url.path, status, f"invalid request: {problems}")

    # --- process health ---------------------------------------------------------------------------

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    # --- Open Inference Protocol v2 -----------------------------------------------------------------

    @app.get("/v2")
    def server_metadata() -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": "1", "extensions": []}

    @app.get("/v2/health/live")
    def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    def ready() -> dict[str, bool]:
        return {"ready": True}  # backends are built before the server listens

    def require_model(name: str) -> None:
        if name != detect_model:
            raise ProtocolError(404, f"unknown model {name!r}; this server has {detect_model!r}")

    @app.get("/v2/models/{name}")
    def model_metadata(name: str) -> dict[str, Any]:
        require_model(name)
        return {
            "name": name,
            "versions": ["1"],
            "platform": "imgpipe-cpu",
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1]}],
            "outputs": [
                {"name": "boxes", "datatype": "FP32", "shape": [-1, 4]},
                {"name": "scores", "datatype": "FP32", "shape": [-1]},
                {"name": "support", "datatype": "INT32", "shape": [-1]},
                {"name": "labels", "datatype": "BYTES", "shape": [-1]},
            ],
        }

    @app.get("/v2/models/{name}/ready")
    def model_ready(name: str) -> dict[str, Any]:
        require_model(name)
        return {"name": name, "ready": True}

    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, request: Request) -> dict[str, Any]:
        require_model(name)
        try:
            payload = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as exc:
            raise ProtocolError(400, f"request body is not JSON: {exc}") from exc
        data = _oip_image_bytes(payload)
        if simulation is not None:
            await simulation.serve(f"oip:{name}")
            detections = simulation.detect(data)
        else:
            # CPU work off the event loop, like FastAPI's sync endpoints.
            detections = await run_in_threadpool(lambda: detector.detect(load(data)))
        response: dict[str, Any] = {"model_name": name, "model_version": "1"}
        if isinstance(payload.get("id"), str):
            response["id"] = payload["id"]
        response["outputs"] = _oip_outputs(detections)
        return response

    # --- OpenAI Images API --------------------------------------------------------------------------

    @app.post("/v1/images/edits")
    async def images_edits(
        image: Annotated[UploadFile, File()],
        prompt: Annotated[str, Form()],
        model: Annotated[str | None, Form()] = None,
        n: Annotated[int, Form()] = 1,
        size: Annotated[str | None, Form()] = None,
        response_format: Annotated[str | None, Form()] = None,
        authorization: Annotated[str | None, Header()] = None,
    ) -> dict[str, Any]:
        if api_key is not None and not hmac.compare_digest(
            (authorization or "").encode(), f"Bearer {api_key}".encode()
        ):
            raise ProtocolError(401, "missing or incorrect API key", code="invalid_api_key")
        if not prompt.strip():
            raise ProtocolError(400, "prompt must not be empty")
        if n != 1:
            raise ProtocolError(400, f"this server makes one image per request, not n={n}")
        if response_format not in (None, "b64_json"):
            raise ProtocolError(400, f"response_format {response_format!r} is not supported; use b64_json")
        target = _parse_size(size)
        data = await image.read()
        if simulation is not None:
            await simulation.serve(f"edits:{model}")
            answer = simulation.generate(data)
        else:
            answer = await run_in_threadpool(lambda: stylize(data, prompt, target))
        b64 = base64.b64encode(answer).decode("ascii")
        return {"created": int(time.time()), "data": [{"b64_json": b64}]}

    def stylize(data: bytes, prompt: str, target: tuple[int, int] | None) -> bytes:
        result = stylizer.stylize(load(data), prompt)
        if target is not None and target != result.size:
            result = result.resize(target, Image.Resampling.LANCZOS)
        return encode_png(result)

    # --- rembg ----------------------------------------------------------------------------------------

    @app.post("/api/remove")
    async def remove(
        file: Annotated[bytes, File()],
        model: Annotated[str, Form()] = "u2net",
        om: Annotated[bool, Form()] = False,
        extras: Annotated[str | None, Query()] = None,
    ) -> Response:
        try:
            hint = hint_from_extras(extras)
        except ValueError as exc:  # rembg ignores extras it cannot parse; so does this server
            log.warning("ignoring invalid extras %r: %s", extras, exc)
            hint = None
        if simulation is not None:
            await simulation.serve(f"rembg:{model}")
            return Response(simulation.matte(file, mask_only=om), media_type="image/png")
        return Response(await run_in_threadpool(lambda: cut(file, hint, om)), media_type="image/png")

    def cut(data: bytes, hint: Box | None, mask_only: bool) -> bytes:
        cut_out = matter.matte(load(data), hint=hint)
        return encode_png(cut_out.getchannel("A") if mask_only else cut_out)

    return app
