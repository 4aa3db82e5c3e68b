"""Mask files Pillow will not write, for the tests of what readers refuse."""

import struct
import zlib

import numpy as np

from coordgan.data.synthetic_faces import PALETTE


def png_with_short_palette(path, labels, n_colors):
    """An 8-bit palette PNG whose PLTE has fewer colours than the labels need (Pillow won't write one)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    h, w = labels.shape
    raw = b"".join(b"\x00" + row.tobytes() for row in labels.astype(np.uint8))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 3, 0, 0, 0))
                     + chunk(b"PLTE", bytes(PALETTE[: 3 * n_colors])) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))
