"""`PetDetector` over the Open Inference Protocol v2 (KServe, Triton, MLServer, `imgpipe model-server`).

Request, to POST {base}/v2/models/{model}/infer:
    {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["<base64 PNG>"]}]}
Response outputs (a leading batch dimension of 1 is accepted on each):
    "boxes"   FP32 [N, 4]  x, y, width, height in pixels of the image sent
    "scores"  FP32 [N]     the backend's confidence (the pet policy is calibrated per backend)
    "support" INT32 [N]    optional, default 1: independent passes that agree
    "labels"  BYTES [N]    optional, default "cat_face"
Boxes are rounded to whole pixels and clipped to the image; empty ones are dropped; the result is
sorted best first, as `PetDetector` requires.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Final
from urllib.parse import quote

import httpx
from PIL import Image

from imgpipe.backends.images import b64_png
from imgpipe.backends.resilience import HttpBackendConfig, ResilientHttpClient, json_body
from imgpipe.imaging.detect import Box, Detection
from imgpipe.imaging.errors import ModelError

INPUT_NAME: Final = "image"
FLOAT_TYPES: Final = ("FP32", "FP64", "FP16")
INT_TYPES: Final = ("INT32", "INT64", "INT16", "INT8", "UINT8", "UINT16", "UINT32", "UINT64")
DEFAULT_LABEL: Final = "cat_face"


def infer_request(image: Image.Image) -> dict[str, Any]:
    """The OIP v2 infer request body for one image."""
    return {"inputs": [{"name": INPUT_NAME, "shape": [1], "datatype": "BYTES", "data": [b64_png(image)]}]}


def _flatten(data: object) -> list[object]:
    """OIP allows tensor data flat (row-major) or nested as the shape."""
    if not isinstance(data, list):
        return [data]
    flat: list[object] = []
    for item in data:
        flat.extend(_flatten(item) if isinstance(item, list) else [item])
    return flat


def _tensor(
    outputs: dict[str, dict[str, Any]], name: str, datatypes: Sequence[str], what: str
) -> tuple[list[int], list[object]] | None:
    """(shape, flat data) of output `name`, checked for datatype and size; None if absent."""
    tensor = outputs.get(name)
    if tensor is None:
        return None
    datatype = tensor.get("datatype")
    if datatype not in datatypes:
        raise ModelError(
            f"{what}: output {name!r} has datatype {datatype!r}, expected {datatypes[0]}", retryable=False
        )
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise ModelError(f"{what}: output {name!r} has an invalid shape {shape!r}", retryable=False)
    data = _flatten(tensor.get("data"))
    if len(data) != math.prod(shape):
        raise ModelError(f"{what}: output {name!r} has {len(data)} values for shape {shape}", retryable=False)
    return shape, data


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ModelError(f"{what}: expected a finite number, got {value!r}", retryable=False)
    return float(value)


def _integer(value: object, what: str) -> int:
    number = _number(value, what)
    if not number.is_integer() or number < 0:
        raise ModelError(f"{what}: expected a non-negative integer, got {value!r}", retryable=False)
    return int(number)


def _leading_ones(shape: list[int], keep: int) -> bool:
    """Whether `shape` is `keep` dimensions with only 1s (batch dimensions) in front."""
    return len(shape) >= keep and all(d == 1 for d in shape[: len(shape) - keep])


def parse_infer_response(payload: object, image_size: tuple[int, int], *, what: str) -> list[Detection]:  # noqa: C901 (one check per field of the protocol's answer)
    """Detections from an OIP v2 infer response, best first; `ModelError(retryable=False)` if malformed."""
    if not isinstance(payload, dict) or not isinstance(payload.get("outputs"), list):
        raise ModelError(f"{what}: response has no 'outputs' list", retryable=False)
    outputs: dict[str, dict[str, Any]] = {}
    for tensor in payload["outputs"]:
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise ModelError(f"{what}: an output is not a named tensor: {tensor!r:.100}", retryable=False)
        if tensor["name"] in outputs:
            raise ModelError(f"{what}: output {tensor['name']!r} appears twice", retryable=False)
        outputs[tensor["name"]] = tensor

    boxes = _tensor(outputs, "boxes", FLOAT_TYPES + INT_TYPES, what)
    scores = _tensor(outputs, "scores", FLOAT_TYPES, what)
    if boxes is None or scores is None:
        raise ModelError(
            f"{what}: response lacks 'boxes' or 'scores' (has {sorted(outputs)})", retryable=False
        )
    box_shape, box_data = boxes
    if not _leading_ones(box_shape, 2) or box_shape[-1] != 4:
        raise ModelError(f"{what}: 'boxes' has shape {box_shape}, expected [N, 4]", retryable=False)
    count = box_shape[-2]
    optional = {
        "support": _tensor(outputs, "support", INT_TYPES, what),
        "labels": _tensor(outputs, "labels", ("BYTES",), what),
    }
    for name, tensor in {"scores": scores, **optional}.items():
        if tensor is not None and (not _leading_ones(tensor[0], 1) or tensor[0][-1] != count):
            raise ModelError(f"{what}: {name!r} has shape {tensor[0]}, expected [{count}]", retryable=False)
    support = optional["support"]
    labels = optional["labels"]

    detections = []
    for i in range(count):
        x, y, width, height = (_number(v, f"{what}: boxes[{i}]") for v in box_data[4 * i : 4 * i + 4])
        if width < 0 or height < 0:
            raise ModelError(f"{what}: boxes[{i}] has a negative size ({width}x{height})", retryable=False)
        label = DEFAULT_LABEL if labels is None else labels[1][i]
        if not isinstance(label, str):
            raise ModelError(f"{what}: labels[{i}] is not a string: {label!r}", retryable=False)
        box = Box(round(x), round(y), round(width), round(height)).clipped(image_size)
        if box.area == 0:
            continue
        detections.append(
            Detection(
                box=box,
                score=_number(scores[1][i], f"{what}: scores[{i}]"),
                label=label,
                support=1 if support is None else _integer(support[1][i], f"{what}: support[{i}]"),
            )
        )
    return sorted(detections, key=lambda d: (d.score, d.support), reverse=True)


class OipPetDetector:
    """`PetDetector` backed by an OIP v2 server; see the module docstring for the tensors."""

    def __init__(
        self,
        config: HttpBackendConfig,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config
        self.http = ResilientHttpClient(
            config, name=f"oip-detect {config.model}", transport=transport, sleep=sleep
        )
        model = quote(config.model, safe="")
        self._infer_path = f"/v2/models/{model}/infer"
        self._model_ready_path = f"/v2/models/{model}/ready"

    def detect(self, image: Image.Image) -> list[Detection]:
        response = self.http.request("POST", self._infer_path, json=infer_request(image))
        what = f"{self.http.name}: infer response"
        return parse_infer_response(json_body(response, what=what), image.size, what=what)

    def ready(self) -> bool:
        """Server readiness (GET /v2/health/ready answers 200); one quick try, no retries."""
        return self.http.probe("/v2/health/ready")

    def model_ready(self) -> bool:
        """Model readiness (GET /v2/models/{model}/ready answers 200)."""
        return self.http.probe(self._model_ready_path)

    def close(self) -> None:
        self.http.close()
