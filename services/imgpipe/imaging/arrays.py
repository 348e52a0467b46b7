"""Conversions between Pillow images and the NumPy arrays OpenCV works on (always RGB order here)."""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image

U8Array = npt.NDArray[np.uint8]


def rgb_array(image: Image.Image) -> U8Array:
    """H x W x 3 uint8 in RGB order (alpha, if any, dropped)."""
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def gray_array(image: Image.Image) -> U8Array:
    return np.asarray(image if image.mode == "L" else image.convert("L"))


def alpha_array(image: Image.Image) -> U8Array | None:
    """The alpha channel, or None for an image without one."""
    if "A" not in image.getbands():
        return None
    return np.asarray(image.getchannel("A"))


def rgb_image(array: npt.NDArray[np.uint8], alpha: U8Array | None = None) -> Image.Image:
    """Image from an RGB (or single-channel) array, with `alpha` attached when given."""
    image = Image.fromarray(np.ascontiguousarray(array))
    if image.mode != "RGB":
        image = image.convert("RGB")
    if alpha is not None:
        image.putalpha(Image.fromarray(alpha))
    return image


def shrink(array: npt.NDArray[np.uint8], max_side: int) -> tuple[npt.NDArray[np.uint8], float]:
    """A copy whose longer side is at most `max_side` (INTER_AREA: no aliasing), and the scale used.

    Never enlarges: scale is min(1, max_side / longer side).
    """
    height, width = array.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale >= 1.0:
        return array, 1.0
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized: U8Array = np.asarray(cv2.resize(array, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)
    return resized, scale
