"""Load untrusted image bytes safely, normalise them, and encode results.

Order of checks in `load_image`, cheapest and most protective first:
1. byte cap, before Pillow sees anything;
2. format sniffed from magic bytes: only JPEG, PNG and WebP reach Pillow, and Pillow is told to try
   only the sniffed plugin, so no other parser ever touches the input;
3. pixel cap from the header: `Image.open` is lazy (it parses the header only), so a decompression
   bomb is refused before its pixel buffer is allocated;
4. full decode with `load()`: truncated or corrupt data fails here. `ImageFile.LOAD_TRUNCATED_IMAGES`
   stays False (a half-grey image must not pass as valid). A PNG must also contain its IEND chunk:
   Pillow stops reading once the pixel data is complete, so a PNG cut anywhere in its last ~16 bytes
   would otherwise load;
5. EXIF orientation applied, so every later stage sees the picture upright.

Pillow's own bomb guard is the process-wide `Image.MAX_IMAGE_PIXELS`; mutating it per call would race
between threads, so it is never touched. Our per-call `max_pixels` must stay below it (checked), which
makes our cap the one that decides; Pillow's `DecompressionBombError` (raised by `Image.open` above
twice its limit) is still caught and reported as `image_too_large`.
"""

from __future__ import annotations

import io
import logging
import struct
from dataclasses import dataclass
from typing import Final

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from imgpipe.imaging.errors import ImageTooLarge, InvalidImage, UnsupportedFormat

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES: Final = 20 * 1024 * 1024
DEFAULT_MAX_PIXELS: Final = 40_000_000  # ~ 7300 x 5500; well below Pillow's global 89 M
SUPPORTED_FORMATS: Final = ("JPEG", "PNG", "WEBP")

_PNG_IEND: Final = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # length 0, type, CRC: the same in every PNG

# What Pillow raises on bad input while parsing or decoding; anything else is a bug and propagates.
_DECODE_ERRORS: Final = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, TypeError)

# Formats that are images but not ours: named so the error says "unsupported", not "corrupt".
_OTHER_MAGIC: Final = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "PSD"),
    (b"qoif", "QOI"),
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"<svg", "SVG"),
    (b"<?xml", "SVG"),
)


@dataclass(frozen=True)
class LoadedImage:
    """A fully decoded, upright image and what was learnt while loading it."""

    image: Image.Image
    format: str  # one of SUPPORTED_FORMATS (an MPO, a multi-picture JPEG, reports "JPEG")
    original_size: tuple[int, int]  # (width, height) as stored in the file, before EXIF orientation
    byte_size: int


def sniff_format(data: bytes) -> str:
    """The supported format `data` starts with; `UnsupportedFormat` or `InvalidImage` otherwise."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for magic, name in _OTHER_MAGIC:
        if data.startswith(magic):
            raise UnsupportedFormat(f"{name} images are not supported; send JPEG, PNG or WebP")
    if data[4:8] == b"ftyp":  # ISO media: HEIC, AVIF
        raise UnsupportedFormat("HEIF/AVIF images are not supported; send JPEG, PNG or WebP")
    raise InvalidImage("not an image (no JPEG, PNG or WebP signature)")


def load_image(
    data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS
) -> LoadedImage:
    """Validate and decode untrusted bytes; see the module docstring for the order of checks."""
    pillow_limit = Image.MAX_IMAGE_PIXELS
    if pillow_limit is not None and max_pixels > pillow_limit:
        raise ValueError(f"max_pixels={max_pixels} exceeds PIL.Image.MAX_IMAGE_PIXELS={pillow_limit}")
    if len(data) > max_bytes:
        raise ImageTooLarge(f"image is {len(data)} bytes, over the limit of {max_bytes}")
    if not data:
        raise InvalidImage("empty image")
    fmt = sniff_format(data)
    try:
        opened = Image.open(io.BytesIO(data), formats=(fmt,))
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image dimensions refused: {exc}") from exc
    except (UnidentifiedImageError, *_DECODE_ERRORS) as exc:
        raise InvalidImage(f"cannot read {fmt} header: {exc}") from exc
    with opened:
        width, height = opened.size
        if width <= 0 or height <= 0:
            raise InvalidImage(f"image has no pixels ({width}x{height})")
        if width * height > max_pixels:
            raise ImageTooLarge(f"image is {width}x{height} pixels, over the limit of {max_pixels}")
        if fmt == "PNG" and _PNG_IEND not in data:
            raise InvalidImage("PNG data is truncated (no IEND chunk)")
        try:
            opened.load()
        except Image.DecompressionBombError as exc:  # e.g. a WebP frame larger than its canvas
            raise ImageTooLarge(f"image dimensions refused: {exc}") from exc
        except _DECODE_ERRORS as exc:
            raise InvalidImage(f"cannot decode {fmt} data: {exc}") from exc
        upright = _apply_orientation(opened)
    return LoadedImage(image=upright, format=fmt, original_size=(width, height), byte_size=len(data))


def _apply_orientation(image: Image.Image) -> Image.Image:
    """EXIF-transposed copy; an unreadable EXIF block costs the rotation, not the whole image."""
    try:
        return ImageOps.exif_transpose(image)
    except (*_DECODE_ERRORS, KeyError) as exc:
        log.warning("ignoring unreadable EXIF orientation: %s", exc)
        return image.copy()


def normalize(loaded: LoadedImage) -> Image.Image:
    """The old system's rule: PNG keeps its alpha (RGBA, or RGB when opaque); everything else is RGB.

    A non-PNG with alpha (WebP) is flattened onto white rather than `convert("RGB")`-ed, which would
    expose whatever colour hides under fully transparent pixels.
    """
    image = _to_8_bit(loaded.image)
    has_alpha = image.has_transparency_data
    if loaded.format == "PNG":
        return image.convert("RGBA" if has_alpha else "RGB")
    if has_alpha:
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image.convert("RGB")


def _to_8_bit(image: Image.Image) -> Image.Image:
    """16-bit greyscale PNGs load as mode I;16 (or I); Pillow's convert would clip them to white."""
    if not image.mode.startswith("I"):
        return image
    wide = np.asarray(image).astype(np.uint32)
    return Image.fromarray((wide >> 8).clip(0, 255).astype(np.uint8))


def encode_png(image: Image.Image, *, compress_level: int = 6) -> bytes:
    """PNG bytes of `image` as it is (mode kept), at zlib's default level."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()
