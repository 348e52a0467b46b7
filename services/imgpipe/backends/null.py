"""The `null` backends (`IMGPIPE_{DETECT,GENERATE,MATTE}_BACKEND=null`): no model work at all.

detect finds one pet in the middle of the image, generate hands the image back, matte makes it
opaque. With them a stage does only what the platform makes it do (consume, read and store its
artifacts, produce), so the benchmark's null workload measures the platform's CPU cost per task.
"""

from __future__ import annotations

from typing import Final

from PIL import Image

from imgpipe.imaging.detect import Box, Detection

NULL_LABEL: Final = "cat_face"
# Above the default pet policy (score 10, support 2): detect passes every task on.
NULL_SCORE: Final = 50.0
NULL_SUPPORT: Final = 5


def null_detection(size: tuple[int, int]) -> Detection:
    """A pet in the middle half of an image of `size`."""
    width, height = size
    box = Box(width // 4, height // 4, max(1, width // 2), max(1, height // 2))
    return Detection(box, NULL_SCORE, NULL_LABEL, NULL_SUPPORT)


class NullPetDetector:
    def detect(self, image: Image.Image) -> list[Detection]:
        return [null_detection(image.size)]


class NullStylizer:
    def stylize(self, image: Image.Image, prompt: str) -> Image.Image:
        return image


class NullMatter:
    def matte(self, image: Image.Image, *, hint: Box | None = None) -> Image.Image:
        opaque = image.convert("RGB")
        opaque.putalpha(255)
        return opaque
