"""The labelled images of the label-propagation benchmark: an image folder, or synthetic faces."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from runtime.errors import CoordGANError
from runtime.io.images import image_extensions, open_image

SYNTHETIC = "synthetic-faces"


@dataclass
class LabelledImages:
    """Images (N, H, W, 3) uint8 and labels (N, H, W) int64 at one size, with their names; `coords`
    (N, 2, H, W) float32: ground-truth correspondence maps, where the data knows them (synthetic)."""

    images: np.ndarray
    labels: np.ndarray
    names: list[str]
    class_names: list[str] | None = None
    coords: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, idx: Sequence[int]) -> "LabelledImages":
        idx = list(idx)
        coords = None if self.coords is None else self.coords[idx]
        return LabelledImages(self.images[idx], self.labels[idx], [self.names[i] for i in idx], self.class_names,
                              coords)


def _read_image(path: Path, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """The image resized to size x size, and its (width, height) before."""
    from PIL import Image, ImageOps

    img = open_image(path)
    return np.asarray(ImageOps.fit(img, (size, size), Image.LANCZOS, centering=(0.5, 0.5))), img.size


def _read_labels(path: Path, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L", "I", "I;16"):
                raise CoordGANError(f"Label image {path} is mode {img.mode}: labels must be a palette or "
                                    "grayscale PNG whose pixel values are class ids.")
            img.load()
            shape = img.size
            labels = np.asarray(ImageOps.fit(img, (size, size), Image.NEAREST, centering=(0.5, 0.5))).astype(np.int64)
    except CoordGANError:
        raise
    except (OSError, ValueError, SyntaxError) as exc:
        raise CoordGANError(f"Cannot read label image {path} ({exc}).") from None
    if labels.min() < 0 or labels.max() > 255:
        raise CoordGANError(f"Label image {path} has class ids outside 0..255.")
    return labels, shape


def load_folder(root, size: int) -> LabelledImages:
    """DIR/images/* (any image Pillow reads) and DIR/labels/<stem>.png, resized to size x size.

    Images use the training resize (fit + center crop, LANCZOS), labels the same fit with nearest,
    so an image and a label map of a different resolution but the same aspect still line up.
    """
    root = Path(root)
    img_dir, lab_dir = root / "images", root / "labels"
    if not img_dir.is_dir() or not lab_dir.is_dir():
        raise CoordGANError(f"Data folder {root} must hold images/ and labels/ subfolders "
                            "(label PNGs named like the images).")
    exts = image_extensions()
    files = sorted(p for p in img_dir.iterdir() if p.is_file() and p.suffix.lower() in exts)
    if not files:
        raise CoordGANError(f"{img_dir} holds no image files.")
    stems = [p.stem for p in files]
    dup = sorted({s for s in stems if stems.count(s) > 1})
    if dup:
        raise CoordGANError(f"{img_dir} has several images named {dup[0]} (different extensions); "
                            "stems must be unique to match labels.")
    images, labels = [], []
    for path in files:
        lab_path = lab_dir / f"{path.stem}.png"
        if not lab_path.is_file():
            raise CoordGANError(f"Image {path.name} has no label map {lab_path}.")
        (image, (w, h)), (label, (lw, lh)) = _read_image(path, size), _read_labels(lab_path, size)
        if abs(w * lh - h * lw) > 0.01 * w * lh:  # the same fit then crops them differently
            raise CoordGANError(f"Label map {lab_path} is {lw}x{lh} but image {path.name} is {w}x{h} (upright, after "
                                "any EXIF rotation): a different aspect ratio, so they do not line up.")
        images.append(image)
        labels.append(label)
    return LabelledImages(np.stack(images), np.stack(labels), [p.name for p in files])


def synthetic_faces(n: int, size: int, seed: int) -> LabelledImages:
    """coordgan.data.make_images(n, size, seed) with PART_NAMES as class names and the renderer's
    ground-truth correspondence maps."""
    from coordgan.data import PART_NAMES, face_coordinates, face_params, make_images

    images, labels = make_images(n, size, seed)
    coords = np.stack([face_coordinates(face_params(seed, i), size) for i in range(n)])
    return LabelledImages(images, labels.astype(np.int64), [f"{i:05d}.png" for i in range(n)], list(PART_NAMES),
                          coords)


def split_refs(data: LabelledImages, refs: Sequence[str] | None = None, num_refs: int = 5,
               max_queries: int | None = None) -> tuple[LabelledImages, LabelledImages]:
    """References (named, or the first num_refs by sorted name) and the queries (all the others)."""
    if refs:
        by_name = {}
        for i, name in enumerate(data.names):
            by_name[name] = i
            by_name.setdefault(Path(name).stem, i)
        missing = [r for r in refs if r not in by_name]
        if missing:
            raise CoordGANError(f"Reference {missing[0]!r} is not among the images.")
        ref_idx = list(dict.fromkeys(by_name[r] for r in refs))
    else:
        if num_refs < 1:
            raise CoordGANError(f"The number of references must be at least 1, got {num_refs}.")
        order = sorted(range(len(data)), key=lambda i: data.names[i])
        ref_idx = order[:num_refs]
    taken = set(ref_idx)
    query_idx = [i for i in sorted(range(len(data)), key=lambda i: data.names[i]) if i not in taken]
    if max_queries is not None:
        if max_queries < 1:
            raise CoordGANError(f"--max-queries must be at least 1, got {max_queries}.")
        query_idx = query_idx[:max_queries]
    if not query_idx:
        raise CoordGANError(f"There are {len(data)} images and {len(ref_idx)} references: no query image is left.")
    return data.subset(ref_idx), data.subset(query_idx)


def check_sets(refs: LabelledImages, queries: LabelledImages, batch: int) -> tuple[int, int]:
    """The label size (H, W) shared by references and queries."""
    if len(refs) == 0 or len(queries) == 0:
        raise CoordGANError("Label propagation needs at least one reference and one query image.")
    if batch < 1:
        raise CoordGANError(f"--batch must be at least 1, got {batch}.")
    size = tuple(refs.labels.shape[1:])
    if tuple(queries.labels.shape[1:]) != size or tuple(refs.images.shape[1:3]) != size \
            or tuple(queries.images.shape[1:3]) != size:
        raise CoordGANError("References and queries (images and labels) must all have one size.")
    return size
