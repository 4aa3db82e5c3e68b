"""The synthetic faces as a dataset view and as image folders on disk (images/ + labels/ palette PNGs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from coordgan.data.synthetic_faces import FaceParams, check_count, check_size, face_params, render
from runtime.errors import CoordGANError
from runtime.fileio import atomic_write
from runtime.io.masks import DAVIS_PALETTE, write_mask

__all__ = ["SyntheticFaces", "write_image_folder"]


def write_image_folder(root, n: int, size: int, seed: int, progress: bool = False) -> None:
    """Write make_images(n, size, seed) as root/images/00000.png (RGB), root/labels/00000.png (palette)."""
    n, size = check_count(n, "The number of images"), check_size(size)
    root = Path(root)
    try:
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "labels").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CoordGANError(f"Cannot create the image folder {root}: {e.strerror}.") from e
    indices = range(n)
    if progress:
        from rich.progress import track

        indices = track(indices, description="synthetic faces")
    for i in indices:
        image, labels = render(face_params(seed, i), size)
        with atomic_write(root / "images" / f"{i:05d}.png") as f:
            Image.fromarray(image, mode="RGB").save(f, format="PNG")
        write_mask(root / "labels" / f"{i:05d}.png", labels, DAVIS_PALETTE)


class SyntheticFaces:
    """Indexable, deterministic view of make_images(length, size, seed), rendered on the fly.

    Item i is (image (size, size, 3) uint8, labels (size, size) uint8), identical to
    make_images(length, size, seed)[·][i]. Plain attributes only, so DataLoader workers can pickle it.
    """

    def __init__(self, size: int = 128, seed: int = 0, length: int = 10_000):
        self.size = check_size(size)
        self.seed = int(seed)
        self.length = check_count(length, "The dataset length")

    def __len__(self) -> int:
        return self.length

    def _index(self, i) -> int:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"SyntheticFaces indices must be integers, got {type(i).__name__}")
        j = int(i) + self.length if i < 0 else int(i)
        if not 0 <= j < self.length:
            raise IndexError(f"index {i} out of range for {self.length} faces")
        return j

    def params(self, i: int) -> FaceParams:
        return face_params(self.seed, self._index(i))

    def __getitem__(self, i) -> tuple[np.ndarray, np.ndarray]:
        return render(self.params(i), self.size)

    def __repr__(self) -> str:
        return f"SyntheticFaces(size={self.size}, seed={self.seed}, length={self.length})"
