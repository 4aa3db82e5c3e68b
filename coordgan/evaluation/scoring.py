"""Label propagation scored: each reference's labels looked up for every query, per-class IoU
accumulated over the queries, beside the identity baseline (the protocol: coordgan/evaluation/__init__.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from coordgan.correspondence import IMPLS, check_coords
from coordgan.correspondence import lookup as correspondence_lookup
from coordgan.evaluation.data import LabelledImages, check_sets
from coordgan.evaluation.maps import CorrFn, correspondence_maps
from runtime.errors import CoordGANError


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


LOOKUPS = IMPLS  # reference, auto, dense, sparse, cuda, cuda-sparse
KERNELS = ("cuda", "cuda-sparse")


def check_lookup(lookup: str, device, classes: int | None = None, mode: str = "soft") -> None:
    """--lookup against the device (and the classes, once known), before any work and in the command's
    words: the lookup's own refusals speak its API (impl=, tensors)."""
    if lookup not in LOOKUPS:
        raise CoordGANError(f"--lookup must be one of {', '.join(LOOKUPS)}, not {lookup!r}.")
    if lookup not in KERNELS:
        return  # reference runs anywhere; the numpy paths take host copies of GPU maps
    if not str(device).startswith("cuda"):
        raise CoordGANError(f"--lookup {lookup} runs a CUDA kernel, so it needs --device cuda; on the CPU use "
                            "--lookup sparse, dense or reference.")
    from runtime.lookup import cuda_available
    from runtime.lookup.spec import kernel_limit

    if not cuda_available():
        raise CoordGANError(f"--lookup {lookup} needs cuda-python to reach the GPU, and it is not installed or "
                            "finds no GPU; use --lookup reference (PyTorch) instead.")
    limit = kernel_limit(classes, mode, None) if classes is not None else None
    if limit:
        raise CoordGANError(f"--lookup {lookup} cannot score this data ({limit}); use --lookup reference.")


def propagate(query_maps: torch.Tensor, ref_map: torch.Tensor, ref_labels: torch.Tensor, num_classes: int,
              *, tau: float = 0.01, mode: str = "soft", chunk_size: int = 4096,
              lookup: str = "reference") -> torch.Tensor:
    """Labels (N, H, W) int64 of N queries from one reference (ref_map (2, h, w), ref_labels (h, w)).

    `lookup`: the path of coordgan.correspondence.lookup: "reference" (torch, any device), "sparse"
    (the runtime's numpy path: exact up to a neglected softmax mass of 1e-4, and far faster on a CPU
    at 128 px), "dense", "cuda" or "auto". The numpy paths run on host copies of GPU maps.
    """
    check_lookup(lookup, query_maps.device, num_classes, mode)
    device = query_maps.device
    n = query_maps.shape[0]
    onehot = torch.nn.functional.one_hot(ref_labels.long(), num_classes).permute(2, 0, 1).float()
    k = ref_map.float().unsqueeze(0).unsqueeze(0).expand(n, 1, -1, -1, -1)
    v = onehot.to(device).unsqueeze(0).unsqueeze(0).expand(n, 1, -1, -1, -1)
    q = query_maps.float()
    if lookup in ("dense", "sparse"):
        q, k, v = q.cpu(), k.cpu(), v.cpu()
    _, labels = correspondence_lookup(q, k, v, tau=tau, mode=mode, chunk_size=chunk_size, impl=lookup)
    return labels.long().to(device)


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


def ground_truth(refs: LabelledImages, queries: LabelledImages, **kwargs) -> PropagationResult | None:
    """evaluate_maps through the data's own correspondence maps (the ceiling); None when it has none."""
    if refs.coords is None or queries.coords is None:
        return None
    return evaluate_maps(refs.coords, queries.coords, refs, queries, **kwargs)


def evaluate_maps(ref_maps: torch.Tensor, query_maps: torch.Tensor, refs: LabelledImages, queries: LabelledImages,
                  *, num_classes: int | None = None, tau: float = 0.01, mode: str = "soft",
                  exclude: Sequence[int] = (0,), ignore_index: int | None = 0, batch: int = 8,
                  device: str | torch.device = "cpu", keep_examples: int = 6,
                  progress: Callable[[str, int, int], None] | None = None, chunk_size: int = 4096,
                  lookup: str = "reference") -> PropagationResult:
    """`evaluate` from correspondence maps already made: ref_maps (R, 2, H, W), query_maps (Q, 2, H, W)."""
    size = check_sets(refs, queries, batch)
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

    check_coords("the correspondence maps", torch.cat([ref_maps, query_maps]))  # NaN / out of range: one sentence

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
