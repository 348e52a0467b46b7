"""`Matter` over rembg's HTTP server (`rembg s`), or anything serving the same route.

Request: POST {base}/api/remove, multipart/form-data:
    file   the input as PNG
    model  `HttpBackendConfig.model` (rembg's session name: u2net, isnet-general-use, birefnet-general,
           sam, ...; rembg answers 422 to a name it does not know)
    ppm    "true" only when `post_process_mask` is set (rembg's mask post-processing)
and, when a hint is given, the query parameter `extras` (rembg passes its JSON to the model):
    {"sam_prompt": [{"type": "rectangle", "data": [x0, y0, x1, y1]}]}
which rembg's `sam` model uses as a box prompt and its other models ignore. `imgpipe model-server`
reads it as the GrabCut hint.
Response: image/png, the input with an alpha matte: it must decode, be RGBA, and have the input's size.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Final

import httpx
from PIL import Image

from imgpipe.backends.images import decode_image, png_bytes, require_mode, require_size
from imgpipe.backends.resilience import HttpBackendConfig, ResilientHttpClient
from imgpipe.imaging.detect import Box

REMOVE_PATH: Final = "/api/remove"


def hint_extras(hint: Box) -> str:
    """rembg's `extras` JSON carrying `hint` as a SAM box prompt (corners, in pixels)."""
    prompt = [{"type": "rectangle", "data": [hint.x, hint.y, hint.right, hint.bottom]}]
    return json.dumps({"sam_prompt": prompt}, separators=(",", ":"))


def hint_from_extras(extras: str | None) -> Box | None:
    """The inverse of `hint_extras`, for servers: the first rectangle prompt, or None.

    Raises ValueError for JSON that is not an object or a rectangle without four numbers.
    """
    if not extras:
        return None
    parsed = json.loads(extras)
    if not isinstance(parsed, dict):
        raise ValueError("extras must be a JSON object")
    prompts = parsed.get("sam_prompt") or []
    if not isinstance(prompts, list):
        raise ValueError("sam_prompt must be a list")
    for mark in prompts:
        if isinstance(mark, dict) and mark.get("type") == "rectangle":
            data = mark.get("data")
            if not (isinstance(data, list) and len(data) == 4 and all(type(v) in (int, float) for v in data)):
                raise ValueError(f"a rectangle needs four numbers, not {data!r}")
            x0, y0, x1, y1 = (round(v) for v in data)
            return Box(min(x0, x1), min(y0, y1), abs(x1 - x0), abs(y1 - y0))
    return None


class RembgMatter:
    """`Matter` backed by rembg's /api/remove; see the module docstring."""

    def __init__(
        self,
        config: HttpBackendConfig,
        *,
        send_hint: bool = True,
        post_process_mask: bool = False,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config
        self.send_hint = send_hint
        self.post_process_mask = post_process_mask
        self.http = ResilientHttpClient(
            config, name=f"rembg {config.model}", transport=transport, sleep=sleep
        )

    def matte(self, image: Image.Image, *, hint: Box | None = None) -> Image.Image:
        fields = {"model": self.config.model}
        if self.post_process_mask:
            fields["ppm"] = "true"
        params = {"extras": hint_extras(hint)} if hint is not None and self.send_hint else None
        response = self.http.request(
            "POST",
            REMOVE_PATH,
            data=fields,
            files={"file": ("image.png", png_bytes(image), "image/png")},
            params=params,
        )
        what = f"{self.http.name}: remove response"
        result = decode_image(response.content, what=what)
        require_mode(result, ("RGBA",), what=what)
        require_size(result, image.size, what=what)
        return result

    def close(self) -> None:
        self.http.close()
