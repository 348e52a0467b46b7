"""Bad image inputs for tests: every kind the pipeline must refuse with a clear error code."""

from __future__ import annotations

import struct
import zlib

from imgpipe.samples import encode, photo


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    """The first `keep` of a file, as an interrupted upload leaves it."""
    return data[: int(len(data) * keep)]


def gif() -> bytes:
    """A real GIF: an image, but not a format the pipeline takes."""
    return encode(photo("chelsea").convert("P"), "GIF")


def decompression_bomb(side: int = 30_000) -> bytes:
    """A valid PNG of side x side black pixels (900 M at the default) that compresses to a few hundred
    kilobytes: decoding it would take gigabytes."""
    row = b"\x00" + b"\x00" * ((side + 7) // 8)  # filter byte + one bit per pixel
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
