"""Sample photos that scikit-image ships, for the demo, tests and benchmarks."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image


def photo(name: str = "chelsea") -> Image.Image:
    """A photo scikit-image ships: "chelsea" is a cat, "astronaut" and "camera" show no pet."""
    from skimage import data

    load: Callable[[], np.ndarray] = getattr(data, name)
    return Image.fromarray(load())


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def photo_jpeg(name: str = "chelsea") -> bytes:
    return encode(photo(name), "JPEG", quality=90)
