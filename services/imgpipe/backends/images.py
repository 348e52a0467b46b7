"""Images over HTTP: what the backends send, and the checks on what comes back.

A model server is trusted no more than a user upload: its images go through the same safe loader
(`imaging.validate.load_image`: byte and pixel caps, format sniffing, full decode). Whatever a
server returns that is not a usable image is a permanent failure (`ModelError`, `retryable=False`):
the same request would get the same answer.
"""

from __future__ import annotations

import base64
import binascii

from PIL import Image

from imgpipe.imaging.errors import ModelError, PipelineError
from imgpipe.imaging.validate import encode_png, load_image


def png_bytes(image: Image.Image) -> bytes:
    """Lossless request body: PNG, mode kept (RGB, or RGBA with the input's alpha), at zlib's fastest
    level (read once, by the server: see stages/images.py)."""
    return encode_png(image, compress_level=1)


def b64_png(image: Image.Image) -> str:
    return base64.b64encode(png_bytes(image)).decode("ascii")


def decode_b64(value: object, *, what: str) -> bytes:
    """Strict base64 (no stray characters); anything else is a malformed answer."""
    if not isinstance(value, str) or not value:
        raise ModelError(f"{what}: expected a base64 string, got {type(value).__name__}", retryable=False)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ModelError(f"{what}: invalid base64: {exc}", retryable=False) from exc


def decode_image(data: bytes, *, what: str) -> Image.Image:
    """Fully decoded image from a server's bytes, or a permanent `ModelError`."""
    try:
        return load_image(data).image
    except PipelineError as exc:
        raise ModelError(f"{what}: not a usable image: {exc.message}", retryable=False) from exc


def require_size(image: Image.Image, size: tuple[int, int], *, what: str) -> None:
    if image.size != size:
        raise ModelError(
            f"{what}: image is {image.width}x{image.height}, expected {size[0]}x{size[1]}", retryable=False
        )


def require_mode(image: Image.Image, modes: tuple[str, ...], *, what: str) -> None:
    if image.mode not in modes:
        raise ModelError(f"{what}: image mode {image.mode}, expected {' or '.join(modes)}", retryable=False)
