"""Label-propagation evaluation: the paper's correspondence benchmark (Mu et al. 2022, Sec. 4.2).

Protocol (NVlabs/CoordGAN ``eval_corr.py`` + ``seg_utils.py``, followed here):

* R reference images (5 in the paper) with part labels; every other image is a query.
* Each reference's labels (one-hot, all classes, background included) are propagated to every
  query through correspondence maps with the soft lookup: L2 distance, softmax(-d / tau),
  tau = 0.01, over all reference pixels (:func:`coordgan.correspondence.lookup`); the query's
  label is the argmax.
* Per reference, intersections and unions are accumulated per class over the whole query set,
  IoU_c = sum inter_c / sum union_c, and the mIoU is the mean over the scored classes.
* The reported score is the mean of the R per-reference mIoUs.
* Background: the public ``inter_and_union`` zeroes predictions where the ground truth is 0 and
  histograms classes 1..C-1 only, so ground-truth background pixels are *ignored* (a prediction
  there counts for no class) and class 0 is left out of the mean. Here ``ignore_index=0`` does
  the former and ``exclude=(0,)`` the latter; both are the defaults.
* Differences, on purpose: a class whose union is empty over the whole query set (never in the
  ground truth, never predicted) has no IoU (None / NaN) and is left out of the mean, where the
  public code's ``+1e-10`` would count it as 0; images are resized with the training transform
  (:class:`coordgan.train.data.ImageFolder`: ``ImageOps.fit``, LANCZOS) and labels with nearest.

Beside it the identity baseline: each query pixel takes the reference label at the same pixel,
scored the same way. A model whose correspondence does anything useful beats it.

The correspondence step is a plain function ``corr_fn(images (N, 3, H, W) in [-1, 1]) ->
maps (N, 2, H, W)`` so tests and other models plug in; :func:`checkpoint_corr_fn` is the
CoordGAN adapter (encoder -> w_struct -> generator.warp).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from runtime.errors import CoordGANError
from runtime.io.images import image_extensions, open_image

__all__ = [
    "SYNTHETIC",
    "LabelledImages",
    "PropagationResult",
    "IoUAccumulator",
    "identity_corr",
    "checkpoint_corr_fn",
    "propagate",
    "evaluate",
    "evaluate_maps",
    "correspondence_maps",
    "ground_truth",
    "match_error",
    "load_folder",
    "synthetic_faces",
    "split_refs",
    "visualize",
]

SYNTHETIC = "synthetic-faces"
CorrFn = Callable[[torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------------------------------
# Data


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


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [-1, 1] (the training scaling)."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


# --------------------------------------------------------------------------------------------------
# Correspondence functions


def identity_corr(images: torch.Tensor) -> torch.Tensor:
    """The canonical grid for every image: propagation by position (the identity baseline)."""
    from coordgan.correspondence import canonical_grid

    n, _, h, w = images.shape
    return canonical_grid(h, w, device=images.device).unsqueeze(0).expand(n, -1, -1, -1).contiguous()


def checkpoint_corr_fn(ck, device: str | torch.device = "cpu") -> CorrFn:
    """encoder -> w_struct -> generator.warp of a loaded Checkpoint, as a corr_fn."""
    encoder = ck.encoder.to(device).eval()  # CoordGANError (one sentence) when it has none
    generator = ck.generator.to(device).eval()

    @torch.no_grad()
    def corr(images: torch.Tensor) -> torch.Tensor:
        w_struct, _ = encoder(images.to(device))
        return generator.warp(w_struct).float()

    return corr


# --------------------------------------------------------------------------------------------------
# Metric


class IoUAccumulator:
    """Per-class intersections and unions summed over many (prediction, ground truth) pairs.

    Ground-truth pixels equal to ``ignore_index`` are not scored (the public protocol zeroes the
    prediction there); IoU_c = inter_c / union_c, None where union_c is 0.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 0):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.inter = np.zeros(num_classes, np.int64)
        self.union = np.zeros(num_classes, np.int64)

    def update(self, pred, gt) -> None:
        pred = np.asarray(pred).astype(np.int64).ravel()
        gt = np.asarray(gt).astype(np.int64).ravel()
        if self.ignore_index is not None:
            keep = gt != self.ignore_index
            pred, gt = pred[keep], gt[keep]
        c = self.num_classes
        area_pred = np.bincount(pred, minlength=c)[:c]
        area_gt = np.bincount(gt, minlength=c)[:c]
        area_inter = np.bincount(gt[pred == gt], minlength=c)[:c]
        self.inter += area_inter
        self.union += area_pred + area_gt - area_inter

    def iou(self) -> np.ndarray:
        """(C,) float64 IoU per class, NaN where the union is empty."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.union > 0, self.inter / np.maximum(self.union, 1), np.nan)

    def miou(self, exclude: Sequence[int] = (0,)) -> float:
        iou = self.iou()
        scored = [c for c in range(self.num_classes) if c not in set(exclude) and not np.isnan(iou[c])]
        return float(np.mean(iou[scored])) if scored else float("nan")


# --------------------------------------------------------------------------------------------------
# Propagation and evaluation


LOOKUPS = ("reference", "sparse")


def propagate(query_maps: torch.Tensor, ref_map: torch.Tensor, ref_labels: torch.Tensor, num_classes: int,
              *, tau: float = 0.01, mode: str = "soft", chunk_size: int = 4096,
              lookup: str = "reference") -> torch.Tensor:
    """Labels (N, H, W) int64 of N queries from one reference (ref_map (2, h, w), ref_labels (h, w)).

    `lookup`: "reference" (coordgan.correspondence, torch, any device) or "sparse" (the runtime's
    numpy path: exact up to a neglected softmax mass of 1e-4, and far faster on a CPU at 128 px).
    """
    n = query_maps.shape[0]
    onehot = torch.nn.functional.one_hot(ref_labels.long(), num_classes).permute(2, 0, 1).float()
    k = ref_map.float().unsqueeze(0).unsqueeze(0).expand(n, 1, -1, -1, -1)
    v = onehot.to(query_maps.device).unsqueeze(0).unsqueeze(0).expand(n, 1, -1, -1, -1)
    if lookup == "sparse":
        from runtime.lookup import lookup_sparse

        _, labels = lookup_sparse(query_maps.float().cpu().numpy(), k.cpu().numpy(), v.cpu().numpy(),
                                  tau=tau, mode=mode)
        return torch.from_numpy(labels).long().to(query_maps.device)
    if lookup != "reference":
        raise CoordGANError(f"--lookup must be one of {', '.join(LOOKUPS)}, not {lookup!r}.")
    from coordgan.correspondence import lookup as reference_lookup

    _, labels = reference_lookup(query_maps.float(), k, v, tau=tau, mode=mode, chunk_size=chunk_size)
    return labels.long()


@dataclass
class PropagationResult:
    ref_names: list[str]
    query_names: list[str]
    class_names: list[str]
    exclude: list[int]
    ignore_index: int | None
    tau: float
    per_ref: list[dict]  # name, miou, identity_miou, iou [C], identity_iou [C]
    miou: float  # mean over references of each reference's mIoU
    identity_miou: float
    class_iou: list[float | None]  # mean over references, per class
    identity_class_iou: list[float | None]
    examples: dict = field(default_factory=dict)  # for the picture: predictions of the first queries

    def to_json(self) -> dict:
        def clean(x):
            return None if x is None or (isinstance(x, float) and math.isnan(x)) else x

        return {
            "protocol": "label propagation (Mu et al. 2022): soft lookup, L2 distance, per-class IoU "
                        "accumulated over all queries, mean over classes, averaged over references",
            "tau": self.tau, "exclude": self.exclude, "ignore_index": self.ignore_index,
            "classes": self.class_names, "references": self.ref_names,
            "num_queries": len(self.query_names), "queries": self.query_names,
            "miou": clean(self.miou), "identity_miou": clean(self.identity_miou),
            "class_iou": {n: clean(v) for n, v in zip(self.class_names, self.class_iou)},
            "identity_class_iou": {n: clean(v) for n, v in zip(self.class_names, self.identity_class_iou)},
            "per_reference": [
                {"reference": r["name"], "miou": clean(r["miou"]), "identity_miou": clean(r["identity_miou"]),
                 "class_iou": {n: clean(v) for n, v in zip(self.class_names, r["iou"])},
                 "identity_class_iou": {n: clean(v) for n, v in zip(self.class_names, r["identity_iou"])}}
                for r in self.per_ref],
        }


def _nanmean_cols(rows: list[list[float]]) -> list[float | None]:
    a = np.asarray(rows, dtype=np.float64)
    out = []
    for col in a.T:
        ok = col[~np.isnan(col)]
        out.append(float(ok.mean()) if len(ok) else None)
    return out


def _maps(corr_fn: CorrFn, images: np.ndarray, batch: int, device, size: tuple[int, int], what: str,
          advance: Callable[[int], None] | None) -> torch.Tensor:
    out = []
    for s in range(0, len(images), batch):
        x = to_tensor(images[s:s + batch]).to(device)
        with torch.no_grad():
            m = corr_fn(x)
        if not isinstance(m, torch.Tensor) or m.dim() != 4 or m.shape[1] != 2:
            raise CoordGANError(f"The correspondence function must return maps (N, 2, H, W), got "
                                f"{tuple(getattr(m, 'shape', ())) or type(m).__name__} for the {what}.")
        if tuple(m.shape[2:]) != size:
            # labels live at the image size; bring the maps there (bilinear keeps coordinates in range)
            m = torch.nn.functional.interpolate(m.float(), size=size, mode="bilinear", align_corners=False)
        out.append(m.float().to(device))
        if advance:
            advance(len(x))
    return torch.cat(out)


def evaluate(corr_fn: CorrFn, refs: LabelledImages, queries: LabelledImages, *, num_classes: int | None = None,
             tau: float = 0.01, mode: str = "soft", exclude: Sequence[int] = (0,), ignore_index: int | None = 0,
             batch: int = 8, device: str | torch.device = "cpu", keep_examples: int = 6,
             progress: Callable[[str, int, int], None] | None = None, chunk_size: int = 4096,
             lookup: str = "reference") -> PropagationResult:
    """Propagate every reference's labels to every query; per-class IoU vs the identity baseline.

    ``progress(stage, done, total)`` is called as work completes (stage: "maps", "propagation").
    """
    ref_maps, query_maps = correspondence_maps(corr_fn, refs, queries, batch=batch, device=device, progress=progress)
    return evaluate_maps(ref_maps, query_maps, refs, queries, num_classes=num_classes, tau=tau, mode=mode,
                         exclude=exclude, ignore_index=ignore_index, batch=batch, device=device,
                         keep_examples=keep_examples, progress=progress, chunk_size=chunk_size, lookup=lookup)


def correspondence_maps(corr_fn: CorrFn, refs: LabelledImages, queries: LabelledImages, *, batch: int = 8,
                        device: str | torch.device = "cpu",
                        progress: Callable[[str, int, int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """corr_fn's maps of the references (R, 2, H, W) and the queries (Q, 2, H, W), at the label size."""
    size = _check_sets(refs, queries, batch)
    total_maps = len(refs) + len(queries)
    done = [0]

    def adv(k):
        done[0] += k
        if progress:
            progress("maps", done[0], total_maps)

    ref_maps = _maps(corr_fn, refs.images, batch, device, size, "references", adv)
    return ref_maps, _maps(corr_fn, queries.images, batch, device, size, "queries", adv)


def match_error(maps: dict[str, tuple], refs: LabelledImages, queries: LabelledImages, *,
                ignore_index: int | None = 0) -> dict[str, float] | None:
    """How far each set of maps' matches land from the true ones, in pixels (None without ground truth).

    `maps`: name -> (ref_maps (R, 2, H, W), query_maps (Q, 2, H, W)). For every scored query pixel
    and every reference: the reference pixel with the nearest coordinate through the given maps,
    and the one through the data's ground-truth maps; the mean distance between the two. Finer
    grained than the IoU of parts a few pixels across. Exact nearest neighbours through k-d trees
    (one per reference map), so 128 px takes seconds on a CPU.
    """
    if refs.coords is None or queries.coords is None:
        return None
    from scipy.spatial import cKDTree

    h, w = refs.labels.shape[1:]
    pix = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij"), -1).reshape(-1, 2).astype(np.float64)

    def points(m):  # a map (2, H, W) -> (H*W, 2) coordinates
        return np.asarray(torch.as_tensor(m).detach().cpu().double()).reshape(2, -1).T

    sets = {"truth": (refs.coords, queries.coords), **maps}
    trees = {name: [cKDTree(points(r)) for r in ref_maps] for name, (ref_maps, _) in sets.items()}
    total, count = dict.fromkeys(maps, 0.0), 0
    for qi in range(len(queries)):
        lab = queries.labels[qi]
        keep = ((lab != ignore_index) if ignore_index is not None else np.ones(lab.shape, bool)).reshape(-1)
        kept = {name: points(query_maps[qi])[keep] for name, (_, query_maps) in sets.items()}
        for ri in range(len(refs)):
            truth = pix[trees["truth"][ri].query(kept["truth"])[1]]
            for name in maps:
                found = pix[trees[name][ri].query(kept[name])[1]]
                total[name] += float(np.linalg.norm(found - truth, axis=1).sum())
            count += int(keep.sum())
    return {name: t / max(count, 1) for name, t in total.items()}


def ground_truth(refs: LabelledImages, queries: LabelledImages, **kwargs) -> PropagationResult | None:
    """evaluate_maps through the data's own correspondence maps (the ceiling); None when it has none."""
    if refs.coords is None or queries.coords is None:
        return None
    return evaluate_maps(refs.coords, queries.coords, refs, queries, **kwargs)


def _check_sets(refs: LabelledImages, queries: LabelledImages, batch: int) -> tuple[int, int]:
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


def evaluate_maps(ref_maps: torch.Tensor, query_maps: torch.Tensor, refs: LabelledImages, queries: LabelledImages,
                  *, num_classes: int | None = None, tau: float = 0.01, mode: str = "soft",
                  exclude: Sequence[int] = (0,), ignore_index: int | None = 0, batch: int = 8,
                  device: str | torch.device = "cpu", keep_examples: int = 6,
                  progress: Callable[[str, int, int], None] | None = None, chunk_size: int = 4096,
                  lookup: str = "reference") -> PropagationResult:
    """`evaluate` from correspondence maps already made: ref_maps (R, 2, H, W), query_maps (Q, 2, H, W)."""
    size = _check_sets(refs, queries, batch)
    ref_maps, query_maps = torch.as_tensor(ref_maps), torch.as_tensor(query_maps)  # numpy maps too
    for what, maps, n in (("reference", ref_maps, len(refs)), ("query", query_maps, len(queries))):
        if tuple(maps.shape) != (n, 2, *size):
            raise CoordGANError(f"The {what} maps must be ({n}, 2, {size[0]}, {size[1]}), got {tuple(maps.shape)}.")
    ref_maps, query_maps = ref_maps.float().to(device), query_maps.float().to(device)
    top = int(max(refs.labels.max(), queries.labels.max()))
    if num_classes is None:
        num_classes = max(top + 1, len(refs.class_names or []))
    elif top >= num_classes:
        raise CoordGANError(f"The labels hold class id {top}, beyond the {num_classes} classes.")
    class_names = list(refs.class_names or [])[:num_classes]
    class_names += [str(c) for c in range(len(class_names), num_classes)]
    exclude = sorted({int(c) for c in exclude})
    from coordgan.correspondence import _check_coords

    _check_coords("the correspondence maps", torch.cat([ref_maps, query_maps]))  # NaN / out of range: one sentence

    per_ref, examples = [], {"pred": [], "identity": []}
    steps, done_p = len(refs) * len(queries), 0
    for r in range(len(refs)):
        ref_lab = torch.from_numpy(refs.labels[r])
        acc = IoUAccumulator(num_classes, ignore_index)
        base = IoUAccumulator(num_classes, ignore_index)
        kept = []
        for s in range(0, len(queries), batch):
            pred = propagate(query_maps[s:s + batch], ref_maps[r], ref_lab.to(device), num_classes,
                             tau=tau, mode=mode, chunk_size=chunk_size, lookup=lookup).cpu().numpy()
            for j, p in enumerate(pred):
                gt = queries.labels[s + j]
                acc.update(p, gt)
                base.update(refs.labels[r], gt)
                if s + j < keep_examples:
                    kept.append(p)
            done_p += len(pred)
            if progress:
                progress("propagation", done_p, steps)
        examples["pred"].append(kept)
        iou, biou = acc.iou(), base.iou()
        per_ref.append({"name": refs.names[r], "miou": acc.miou(exclude), "identity_miou": base.miou(exclude),
                        "iou": [float(v) for v in iou], "identity_iou": [float(v) for v in biou]})

    def scored(rows):
        return [None if (c in exclude or v is None) else v for c, v in enumerate(_nanmean_cols(rows))]

    def mean(vals):
        vals = [v for v in vals if not math.isnan(v)]
        return float(np.mean(vals)) if vals else float("nan")

    return PropagationResult(
        ref_names=list(refs.names), query_names=list(queries.names), class_names=class_names, exclude=exclude,
        ignore_index=ignore_index, tau=float(tau), per_ref=per_ref,
        miou=mean([r["miou"] for r in per_ref]), identity_miou=mean([r["identity_miou"] for r in per_ref]),
        class_iou=scored([r["iou"] for r in per_ref]), identity_class_iou=scored([r["identity_iou"] for r in per_ref]),
        examples=examples)


# --------------------------------------------------------------------------------------------------
# Picture


def visualize(result: PropagationResult, refs: LabelledImages, queries: LabelledImages, cell: int = 96) -> np.ndarray:
    """Grid: row 0 query images, row 1 their ground truth; then one row per reference: its image,
    its labels, and its labels propagated to each query (palette colours)."""
    from coordgan.data import colorize
    from coordgan.visualize import tile

    k = len(result.examples["pred"][0]) if result.examples.get("pred") else 0
    blank = [None, None]
    cells = [blank + [queries.images[j] for j in range(k)],
             blank + [colorize(queries.labels[j]) for j in range(k)]]
    for r, preds in enumerate(result.examples["pred"]):
        cells.append([refs.images[r], colorize(refs.labels[r])] + [colorize(p) for p in preds])
    return tile(cells, cell)
