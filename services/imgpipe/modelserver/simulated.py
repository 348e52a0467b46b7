"""A simulated accelerator behind the model server's protocols (`imgpipe model-server --simulate`).

Each model call holds one of the model's `slots` for `service_time` seconds (an asyncio sleep: the
accelerator's time is not this machine's CPU); beyond `slots` calls at once, calls queue in arrival
order. So one model serves at most slots / service_time calls per second, whoever calls it: the
bound of the remote-model benchmark (docs/benchmarks.md).

The answers are valid protocol responses made without model work, those of the `null` backends
(backends/null.py): detect finds one pet in the middle of the image (sized from the header, no
decode), generate hands the image back, matte makes it opaque RGBA. The matte's PNG is cached by
input: the benchmark sends the same image again and again, and the server's own encode would
otherwise take CPU the systems under test compete for.
"""

from __future__ import annotations

import asyncio
import io
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Final

from PIL import Image

from imgpipe.backends.null import null_detection
from imgpipe.imaging.detect import Detection
from imgpipe.imaging.errors import InvalidImage
from imgpipe.imaging.validate import encode_png, load_image
from imgpipe.modelserver.server import DEFAULT_SERVICE_TIME, DEFAULT_SLOTS

_CACHED_ANSWERS: Final = 32


@dataclass
class Simulation:
    service_time: float = DEFAULT_SERVICE_TIME
    slots: int = DEFAULT_SLOTS
    _semaphores: dict[str, asyncio.Semaphore] = field(default_factory=dict, init=False, repr=False)
    _serving: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    _waiting: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    _mattes: OrderedDict[tuple[bytes, bool], bytes] = field(
        default_factory=OrderedDict, init=False, repr=False
    )

    def __post_init__(self) -> None:
        if not self.service_time >= 0:
            raise ValueError(f"service_time must not be negative, not {self.service_time}")
        if self.slots < 1:
            raise ValueError(f"slots must be at least 1, not {self.slots}")

    async def serve(self, model: str) -> None:
        """Wait for one of `model`'s slots, then hold it for the service time."""
        semaphore = self._semaphores.setdefault(model, asyncio.Semaphore(self.slots))
        self._waiting[model] = self._waiting.get(model, 0) + 1
        try:
            await semaphore.acquire()
        finally:
            self._waiting[model] -= 1
        self._serving[model] = self._serving.get(model, 0) + 1
        try:
            await asyncio.sleep(self.service_time)
        finally:
            self._serving[model] -= 1
            semaphore.release()

    def load(self, model: str) -> tuple[int, int]:
        """(calls being served, calls queued) of a model now."""
        return self._serving.get(model, 0), self._waiting.get(model, 0)

    def detect(self, data: bytes) -> list[Detection]:
        """One pet covering the middle of the image; only the header is read."""
        return [null_detection(_size(data))]

    def generate(self, data: bytes) -> bytes:
        """The image as sent: a stylizer that keeps everything."""
        _size(data)
        return data

    def matte(self, data: bytes, *, mask_only: bool) -> bytes:
        """The image fully opaque (RGBA), or its all-foreground mask (L)."""
        key = (data, mask_only)
        cached = self._mattes.get(key)
        if cached is None:
            image = load_image(data).image
            if mask_only:
                result = Image.new("L", image.size, 255)
            else:
                result = image.convert("RGB")
                result.putalpha(255)
            cached = encode_png(result, compress_level=1)
            self._mattes[key] = cached
            while len(self._mattes) > _CACHED_ANSWERS:
                self._mattes.popitem(last=False)
        self._mattes.move_to_end(key)
        return cached


def _size(data: bytes) -> tuple[int, int]:
    """An image's size from its header (Pillow opens lazily); a clear error for what is no image."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (OSError, ValueError) as exc:  # UnidentifiedImageError is an OSError
        raise InvalidImage(f"image is not decodable: {exc}") from exc
