"""Label masks: read reference PNGs, resize them, write DAVIS-style palette PNGs.

A mask is an (H, W) uint8 array of labels 0..255 plus a palette (768 bytes, RGB per label).
References come as palette ("P") PNGs, where the pixel values are the labels and the file's
palette colours them, or as grayscale PNGs (labels as gray levels; the DAVIS palette colours
the outputs). A grayscale mask holding only 0 and 255 is a binary mask (DAVIS 2016 style):
255 reads as label 1, so "object" does not become 256 classes. Lossy files (JPEG, WebP, ...,
told by their content, whatever their suffix) are refused: their noise would read as labels.

Pillow and numpy only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from runtime.errors import CoordGANError, first_line
from runtime.fileio import atomic_write


def _voc_colormap() -> bytes:
    """The PASCAL VOC colormap DAVIS annotations use: the bits of each index spread over R, G, B."""
    pal = bytearray()
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += bytes((r, g, b))
    return bytes(pal)


DAVIS_PALETTE: bytes = _voc_colormap()  # 256 entries
VOID = 255  # DAVIS marks "don't care" ground-truth pixels with 255

# Masks whose aspect ratio differs from the frame's by more than this are not masks of the frame.
_ASPECT_TOLERANCE = 0.02


def read_mask(path, *, what: str = "Mask") -> tuple[np.ndarray, bytes | None]:
    """(labels (H, W) uint8, palette bytes or None for grayscale) of a palette or grayscale PNG."""
    path = Path(path)
    if path.is_dir():
        raise CoordGANError(f"{what} {path} is a folder, not a mask file; give a .png mask.")
    if not path.is_file():
        raise CoordGANError(f"{what} {path} does not exist.")
    try:
        with Image.open(path) as img:
            lossy = _lossy_format(img)
            if lossy:
                raise CoordGANError(f"{what} {path} is a {lossy} image, whose lossy compression turns edges into "
                                    "noise that would read as labels; save the mask as a PNG.")
            img.load()
            mode = img.mode
            if mode == "P":
                labels = np.asarray(img, dtype=np.uint8)
                palette = _palette_bytes(img)
                used = int(labels.max())
                if used * 3 + 3 > len(palette):
                    raise CoordGANError(
                        f"{what} {path} uses label {used} but its palette has only {len(palette) // 3} colours; "
                        "the file is damaged or was not written as a label mask.")
                return labels, palette
            if mode in ("L", "1", "I", "I;16", "I;16B", "I;16L"):
                labels = np.asarray(img)
            else:
                raise CoordGANError(
                    f"{what} {path} is a {mode} image; a label mask must be a palette (P) or grayscale PNG "
                    "whose pixel values are the labels.")
    except CoordGANError:
        raise
    except (OSError, ValueError, SyntaxError) as exc:
        raise CoordGANError(f"{what} {path} cannot be read as an image ({first_line(exc)}).") from None
    if mode == "1":
        return labels.astype(np.uint8), None
    if labels.size and int(labels.max()) > 255:
        raise CoordGANError(f"{what} {path} has label {int(labels.max())}; labels must be 0..255.")
    labels = labels.astype(np.uint8)
    if set(np.unique(labels).tolist()) <= {0, 255}:
        labels = (labels == 255).astype(np.uint8)  # a binary 0/255 mask: one object
    return labels, None


def _lossy_format(img: Image.Image) -> str | None:
    """The name of the file's real format (not its suffix) when it is lossy, else None."""
    if img.format in ("JPEG", "MPO", "JPEG2000", "WEBP"):  # MPO: a JPEG with more pictures
        return img.format
    compression = str(img.info.get("compression", ""))
    if img.format == "TIFF" and ("jpeg" in compression or "webp" in compression):
        return f"TIFF ({compression})"
    return None


def _palette_bytes(img: Image.Image) -> bytes:
    pal = img.getpalette() or []
    return bytes(pal[: 768 - len(pal) % 3] if len(pal) % 3 else pal)


def full_palette(palette: bytes | None) -> bytes:
    """A 256-entry palette: the given colours, the DAVIS colours after them (or instead)."""
    palette = palette or b""
    return palette[:768] + DAVIS_PALETTE[len(palette[:768]):]


def resize_mask(labels: np.ndarray, size: tuple[int, int], *, what: str = "Mask") -> np.ndarray:
    """Nearest-neighbour resize of a label mask to size = (H, W); refuses a different aspect ratio."""
    h, w = labels.shape
    th, tw = size
    if (h, w) == (th, tw):
        return labels
    if abs((w / h) / (tw / th) - 1) > _ASPECT_TOLERANCE:
        raise CoordGANError(f"{what} is {w}x{h} but the frames are {tw}x{th}: a different aspect ratio, so it "
                            "is not a mask of these frames.")
    return np.asarray(Image.fromarray(labels).resize((tw, th), Image.NEAREST))


def write_mask(path, labels: np.ndarray, palette: bytes) -> None:
    """A palette PNG (DAVIS format), atomically: temp file, then rename."""
    img = Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8), mode="P")
    img.putpalette(full_palette(palette))
    with atomic_write(path) as f:
        img.save(f, format="PNG")


def colorize(labels: np.ndarray, palette: bytes) -> np.ndarray:
    """(H, W) labels -> (H, W, 3) uint8 colours of the palette."""
    table = np.frombuffer(full_palette(palette), np.uint8).reshape(256, 3)
    return table[labels]


def overlay(frame: np.ndarray, labels: np.ndarray, palette: bytes, alpha: float = 0.5) -> np.ndarray:
    """The frame with labelled pixels (label > 0) tinted by their palette colour."""
    tinted = frame.astype(np.float32)
    fg = labels > 0
    tinted[fg] = (1 - alpha) * tinted[fg] + alpha * colorize(labels, palette)[fg]
    return tinted.round().astype(np.uint8)

