"""`Stylizer` over the OpenAI Images API's edit endpoint (OpenAI, or any compatible server).

Request: POST {base}/v1/images/edits, multipart/form-data, "Authorization: Bearer <api_key>" when a
key is configured:
    image            the input as PNG (file part "image.png")
    prompt, model    the task's prompt, `HttpBackendConfig.model`
    n                1
    response_format  "b64_json", except for models named gpt-image-*: they always answer b64_json
                     and reject the field with HTTP 400 ("Unknown parameter"); the
                     `send_response_format` argument overrides the guess
    size             only when configured, e.g. "1536x1024"
Response: {"created": <unix time>, "data": [{"b64_json": "<base64 image>"}, ...]}; the first image
is used.

The result must keep the input's geometry, since the detected pet box (in input pixels) is the matte
stage's hint: it must be RGB or RGBA (palette PNGs are expanded) and have the input's aspect ratio
within `aspect_tolerance`; a different size is scaled back to the input's (servers often work at
fixed sizes such as 1024x1024). As `Stylizer` requires, the result carries the input's alpha when the
input has one, and is RGB otherwise (a transparent result is flattened onto white).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

import httpx
from PIL import Image

from imgpipe.backends.images import decode_b64, decode_image, png_bytes, require_mode
from imgpipe.backends.resilience import HttpBackendConfig, ResilientHttpClient, json_body
from imgpipe.imaging.errors import ModelError

EDITS_PATH: Final = "/v1/images/edits"
DEFAULT_ASPECT_TOLERANCE: Final = 0.02


def parse_images_response(payload: object, *, what: str) -> bytes:
    """The first image's bytes from an Images API response; `ModelError(retryable=False)` if malformed."""
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list) or not payload["data"]:
        raise ModelError(f"{what}: response has no 'data' list with an image", retryable=False)
    first = payload["data"][0]
    if not isinstance(first, dict):
        raise ModelError(f"{what}: data[0] is not an object", retryable=False)
    if "b64_json" not in first:
        hint = (
            " (the server returned a URL: it must honour response_format=b64_json)" if "url" in first else ""
        )
        raise ModelError(f"{what}: data[0] has no 'b64_json'{hint}", retryable=False)
    return decode_b64(first["b64_json"], what=f"{what}: data[0].b64_json")


def fit_to_input(
    result: Image.Image, source: Image.Image, *, what: str, aspect_tolerance: float = DEFAULT_ASPECT_TOLERANCE
) -> Image.Image:
    """`result` in `source`'s geometry and alpha convention (module docstring), or a permanent error."""
    if result.mode == "P":
        result = result.convert("RGBA" if result.has_transparency_data else "RGB")
    require_mode(result, ("RGB", "RGBA"), what=what)
    if result.size != source.size:
        want = source.width / source.height
        got = result.width / result.height
        if abs(got - want) / want > aspect_tolerance:
            raise ModelError(
                f"{what}: image is {result.width}x{result.height}, not the aspect ratio of the "
                f"{source.width}x{source.height} input",
                retryable=False,
            )
        result = result.resize(source.size, Image.Resampling.LANCZOS)
    if "A" in source.getbands():
        fitted = result.convert("RGB")
        fitted.putalpha(source.getchannel("A"))
        return fitted
    if result.mode == "RGBA":
        flat = Image.new("RGB", result.size, (255, 255, 255))
        flat.paste(result, mask=result.getchannel("A"))
        return flat
    return result


class OpenAIImagesStylizer:
    """`Stylizer` backed by an OpenAI-compatible /v1/images/edits; see the module docstring."""

    def __init__(
        self,
        config: HttpBackendConfig,
        *,
        size: str | None = None,
        send_response_format: bool | None = None,
        aspect_tolerance: float = DEFAULT_ASPECT_TOLERANCE,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config
        self.size = size
        self.send_response_format = (
            not config.model.startswith("gpt-image") if send_response_format is None else send_response_format
        )
        self.aspect_tolerance = aspect_tolerance
        self.http = ResilientHttpClient(
            config, name=f"openai-edits {config.model}", transport=transport, sleep=sleep
        )

    def stylize(self, image: Image.Image, prompt: str) -> Image.Image:
        fields = {"prompt": prompt, "model": self.config.model, "n": "1"}
        if self.send_response_format:
            fields["response_format"] = "b64_json"
        if self.size:
            fields["size"] = self.size
        response = self.http.request(
            "POST", EDITS_PATH, data=fields, files={"image": ("image.png", png_bytes(image), "image/png")}
        )
        what = f"{self.http.name}: edits response"
        data = parse_images_response(json_body(response, what=what), what=what)
        result = decode_image(data, what=what)
        return fit_to_input(result, image, what=what, aspect_tolerance=self.aspect_tolerance)

    def close(self) -> None:
        self.http.close()
