"""Image files in: the one reader behind frame folders, training images and evaluation images.

Images are read upright: an EXIF orientation (phone photos) is applied, as image viewers and
annotation tools do, so a mask drawn on what a viewer shows lines up with the pixels we use.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from runtime.errors import CoordGANError, first_line


@lru_cache(maxsize=1)
def image_extensions() -> frozenset[str]:
    """Suffixes (lower case, with the dot) of every format Pillow can open."""
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def upright(img: Image.Image) -> Image.Image:
    """A Pillow image as a viewer shows it: its EXIF orientation applied. A broken EXIF block (Pillow
    raises various errors on some) leaves the stored orientation rather than failing."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception:
        return img


def open_image(path, *, what: str = "Image") -> Image.Image:
    """The image file as an upright RGB Pillow image (loaded; the file is closed)."""
    try:
        with Image.open(path) as img:
            return upright(img).convert("RGB")
    except (OSError, ValueError, SyntaxError) as exc:
        raise CoordGANError(f"{what} {Path(path)} cannot be read as an image ({first_line(exc)}).") from None


def read_image(path, *, what: str = "Image") -> np.ndarray:
    """The image file as (H, W, 3) uint8 RGB, upright."""
    return np.asarray(open_image(path, what=what))

