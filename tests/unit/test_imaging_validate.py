"""load_image / normalize / encode_png on real encoded images (skimage's chelsea, Pillow encoders)."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import numpy as np
import pytest
from PIL import Image

from imgpipe.imaging.errors import ErrorCode, ImageTooLarge, InvalidImage, UnsupportedFormat
from imgpipe.imaging.validate import (
    DEFAULT_MAX_PIXELS,
    encode_png,
    load_image,
    normalize,
    sniff_format,
)
from imgpipe.samples import photo

pytestmark = pytest.mark.unit


CHELSEA = photo("chelsea")  # 451 x 300 RGB


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))


def one_bit_png(width: int, height: int) -> bytes:
    """A well-formed all-black 1-bit greyscale PNG, built row by row so that even 20000 x 20000 costs
    ~50 MB of zlib input and never a pixel buffer (it compresses to ~50 kB: a decompression bomb)."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    rows_per_call = 500
    parts = [
        compressor.compress(row * min(rows_per_call, height - y)) for y in range(0, height, rows_per_call)
    ]
    idat = b"".join(parts) + compressor.flush()
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    )


def pillow_allocations() -> int:
    """How many image buffers Pillow's C core has created in this process (`ImagingNew` calls)."""
    stats: dict[str, int] = getattr(Image, "core").get_stats()  # noqa: B009  (untyped C module)
    return stats["new_count"]


@pytest.fixture(scope="module")
def jpeg_bytes() -> bytes:
    return encode(CHELSEA, "JPEG", quality=90)


@pytest.fixture(scope="module")
def png_bytes() -> bytes:
    return encode(CHELSEA, "PNG")


# --- accepted formats -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_supported_formats_decode_fully(fmt: str) -> None:
    raw = encode(CHELSEA, fmt)
    loaded = load_image(raw)
    assert loaded.format == fmt
    assert loaded.image.size == (451, 300)
    assert loaded.original_size == (451, 300)
    assert loaded.byte_size == len(raw)
    pixels = np.asarray(loaded.image.convert("RGB"), dtype=int)
    assert np.abs(pixels - np.asarray(CHELSEA, dtype=int)).mean() < 6  # the picture, not just a header


@pytest.mark.parametrize(("fmt", "name"), [("GIF", "GIF"), ("BMP", "BMP"), ("TIFF", "TIFF")])
def test_other_real_formats_are_unsupported(fmt: str, name: str) -> None:
    with pytest.raises(UnsupportedFormat, match=name) as caught:
        load_image(encode(CHELSEA, fmt))
    assert caught.value.code is ErrorCode.UNSUPPORTED_FORMAT
    assert caught.value.code.value == "unsupported_format"
    assert caught.value.retryable is False


def test_sniff_format_reads_magic_bytes_only() -> None:
    assert sniff_format(b"\xff\xd8\xff\xe0rest") == "JPEG"
    assert sniff_format(b"\x89PNG\r\n\x1a\n") == "PNG"
    assert sniff_format(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "WEBP"
    with pytest.raises(InvalidImage):
        sniff_format(b"RIFF\x00\x00\x00\x00WAVEfmt ")  # RIFF, but audio
    with pytest.raises(UnsupportedFormat, match="HEIF"):
        sniff_format(b"\x00\x00\x00\x18ftypheic")


# --- broken input -----------------------------------------------------------------------------------


@pytest.mark.parametrize("cut", [1, 2, 100, 5000])
def test_truncated_jpeg_is_invalid(jpeg_bytes: bytes, cut: int) -> None:
    with pytest.raises(InvalidImage) as caught:
        load_image(jpeg_bytes[:-cut])
    assert caught.value.code == "invalid_image"
    assert caught.value.retryable is False


@pytest.mark.parametrize("cut", [1, 12, 13, 100, 50_000])
def test_truncated_png_is_invalid(png_bytes: bytes, cut: int) -> None:
    # 1-13 bytes lose only (part of) the IEND trailer: Pillow alone would still decode those.
    with pytest.raises(InvalidImage) as caught:
        load_image(png_bytes[:-cut])
    assert caught.value.code == "invalid_image"


def test_truncated_webp_is_invalid() -> None:
    raw = encode(CHELSEA, "WEBP")
    with pytest.raises(InvalidImage):
        load_image(raw[:-10])


def test_png_with_trailing_bytes_after_iend_still_loads(png_bytes: bytes) -> None:
    assert load_image(png_bytes + b"trailing junk").image.size == (451, 300)


def test_corrupt_png_pixel_data_is_invalid(png_bytes: bytes) -> None:
    corrupt = bytearray(png_bytes)
    corrupt[5000:5100] = b"\xaa" * 100  # inside the IDAT zlib stream
    with pytest.raises(InvalidImage, match="decode"):
        load_image(bytes(corrupt))


def test_corrupt_jpeg_scan_data_is_invalid(jpeg_bytes: bytes) -> None:
    corrupt = jpeg_bytes[:600] + b"\x00" * 5000 + jpeg_bytes[-2:]  # header kept, scan zeroed
    with pytest.raises(InvalidImage):
        load_image(corrupt)


@pytest.mark.parametrize(
    "raw",
    [
        b"\x00" * 100,  # no signature at all
        b"hello, this is text",
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 64,  # PNG signature, garbage header
        b"\xff\xd8\xff" + b"\x00" * 64,  # JPEG signature, garbage
    ],
)
def test_corrupt_data_is_invalid(raw: bytes) -> None:
    with pytest.raises(InvalidImage) as caught:
        load_image(raw)
    assert caught.value.code == ErrorCode.INVALID_IMAGE


def test_empty_is_invalid() -> None:
    with pytest.raises(InvalidImage, match="empty"):
        load_image(b"")


# --- size caps --------------------------------------------------------------------------------------


def test_byte_cap_is_checked_before_anything_else(jpeg_bytes: bytes) -> None:
    assert load_image(jpeg_bytes, max_bytes=len(jpeg_bytes)).image.size == (451, 300)
    with pytest.raises(ImageTooLarge) as caught:
        load_image(jpeg_bytes, max_bytes=len(jpeg_bytes) - 1)
    assert caught.value.code == "image_too_large"
    with pytest.raises(ImageTooLarge):  # over the byte cap wins even over "not an image"
        load_image(b"\x00" * 101, max_bytes=100)


def test_pixel_cap_is_per_call(png_bytes: bytes) -> None:
    assert load_image(png_bytes, max_pixels=451 * 300).image.size == (451, 300)
    with pytest.raises(ImageTooLarge, match="451x300"):
        load_image(png_bytes, max_pixels=451 * 300 - 1)


def test_pixel_cap_above_pillows_own_limit_is_a_programming_error(png_bytes: bytes) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    assert limit is not None
    with pytest.raises(ValueError, match="MAX_IMAGE_PIXELS"):
        load_image(png_bytes, max_pixels=limit + 1)


def test_bomb_generator_makes_valid_pngs() -> None:
    # The bombs below are only meaningful if the same construction decodes when small.
    loaded = load_image(one_bit_png(300, 200))
    assert loaded.image.size == (300, 200)
    assert normalize(loaded).getextrema() == ((0, 0), (0, 0), (0, 0))


@pytest.mark.parametrize(
    ("size", "stopped_by"),
    [
        ((20000, 20000), "could be decompression bomb"),  # 400 M px: Pillow's open refuses it
        ((8000, 6000), "over the limit of"),  # 48 M px: under Pillow's limit, over our default 40 M
    ],
)
def test_decompression_bomb_is_refused_before_allocation(size: tuple[int, int], stopped_by: str) -> None:
    bomb = one_bit_png(*size)
    assert len(bomb) < 100_000
    assert size[0] * size[1] > DEFAULT_MAX_PIXELS
    allocations_before = pillow_allocations()
    with pytest.raises(ImageTooLarge, match=stopped_by) as caught:
        load_image(bomb)
    assert caught.value.code == "image_too_large"
    assert pillow_allocations() == allocations_before


# --- orientation and normalisation ------------------------------------------------------------------


def test_exif_orientation_6_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display rotated 90 degrees clockwise
    loaded = load_image(encode(CHELSEA, "JPEG", quality=95, exif=exif.tobytes()))
    assert loaded.original_size == (451, 300)
    assert loaded.image.size == (300, 451)
    got = np.asarray(loaded.image, dtype=int)
    clockwise = np.asarray(CHELSEA.transpose(Image.Transpose.ROTATE_270), dtype=int)
    counter_clockwise = np.asarray(CHELSEA.transpose(Image.Transpose.ROTATE_90), dtype=int)
    assert np.abs(got - clockwise).mean() < 4
    assert np.abs(got - counter_clockwise).mean() > 20


def test_jpeg_without_exif_keeps_its_size(jpeg_bytes: bytes) -> None:
    assert load_image(jpeg_bytes).image.size == (451, 300)


@pytest.mark.parametrize(
    ("source_mode", "fmt"),
    [("L", "JPEG"), ("CMYK", "JPEG"), ("RGB", "WEBP"), ("P", "PNG"), ("L", "PNG"), ("RGB", "PNG")],
)
def test_normalize_gives_rgb_for_opaque_images(source_mode: str, fmt: str) -> None:
    image = normalize(load_image(encode(CHELSEA.convert(source_mode), fmt)))
    assert image.mode == "RGB"
    assert image.size == (451, 300)


def test_normalize_keeps_png_alpha() -> None:
    rgba = CHELSEA.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    image = normalize(load_image(encode(rgba, "PNG")))
    assert image.mode == "RGBA"
    assert np.array_equal(np.asarray(image), np.asarray(rgba))


def test_normalize_turns_paletted_png_transparency_into_alpha() -> None:
    paletted = CHELSEA.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    raw = encode(paletted, "PNG", transparency=0)
    image = normalize(load_image(raw))
    assert image.mode == "RGBA"
    alpha = np.asarray(image.getchannel("A"))
    assert set(np.unique(alpha)) == {0, 255}


def test_normalize_flattens_non_png_alpha_onto_white() -> None:
    rgba = CHELSEA.convert("RGBA")
    alpha = np.full((300, 451), 255, np.uint8)
    alpha[:, :100] = 0  # left strip fully transparent
    rgba.putalpha(Image.fromarray(alpha))
    image = normalize(load_image(encode(rgba, "WEBP", lossless=True)))
    assert image.mode == "RGB"
    pixels = np.asarray(image)
    assert (pixels[:, :100] == 255).all()
    assert np.array_equal(pixels[:, 100:], np.asarray(CHELSEA)[:, 100:])


def test_normalize_scales_16_bit_grey_instead_of_clipping() -> None:
    wide = (np.asarray(CHELSEA.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    image = normalize(load_image(encode(Image.fromarray(wide), "PNG")))
    assert image.mode == "RGB"
    grey = np.asarray(image)[:, :, 0]
    assert np.array_equal(grey, np.asarray(CHELSEA.convert("L")))


def test_encode_png_round_trips_mode_and_pixels() -> None:
    rgba = CHELSEA.convert("RGBA")
    rgba.putalpha(77)
    decoded = Image.open(io.BytesIO(encode_png(rgba)))
    assert decoded.format == "PNG"
    assert decoded.mode == "RGBA"
    assert np.array_equal(np.asarray(decoded), np.asarray(rgba))
