"""DAVIS video segmentation measures on binary masks: region similarity J and boundary F.

Follows the DAVIS evaluation code (davis2017-evaluation, after Perazzi et al., CVPR 2016):

* J = |pred ∩ gt| / |pred ∪ gt| over non-void pixels. Convention: a frame where neither the
  prediction nor the ground truth holds the object (empty union) scores J = 1.
* F = 2PR / (P + R) of boundary pixels. Boundaries come from comparing each pixel with its right,
  lower and lower-right neighbours (`seg2bmap`, one pixel wide, on the object side); a predicted
  boundary pixel is correct when a ground-truth boundary pixel lies within the tolerance disk,
  radius ceil(0.008 * image diagonal) pixels (bound_th 0.008), and vice versa for recall. Dilating
  by a disk of radius r marks exactly the pixels at Euclidean distance <= r, which is how it is
  computed here (scipy.ndimage's exact distance transform: one pass instead of a large structuring
  element). Both empty: P = R = 1 (F = 1); only one empty: F = 0.
* Per object over a sequence's frames: mean, recall (fraction of frames above 0.5) and decay
  (mean of the first quarter of the frames minus mean of the last quarter).
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from runtime.errors import CoordGANError

BOUND_TH = 0.008


def _ndimage():
    try:
        from scipy import ndimage
    except ImportError:
        raise CoordGANError("The boundary measure F needs scipy; install it with: "
                            "pip install 'coordgan-deploy[runtime]'.") from None
    return ndimage


def region_similarity(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None) -> float:
    """J (IoU) of two boolean masks, void pixels ignored; 1.0 when both are empty."""
    pred, gt = pred.astype(bool), gt.astype(bool)
    keep = np.ones_like(gt) if void is None else ~void.astype(bool)
    union = np.count_nonzero((pred | gt) & keep)
    if union == 0:
        return 1.0
    return np.count_nonzero(pred & gt & keep) / union


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """One-pixel boundaries of a boolean mask (the DAVIS seg2bmap at the mask's own size)."""
    seg = mask.astype(bool)
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def tolerance(shape, bound_th: float = BOUND_TH) -> int:
    """Match radius in pixels: bound_th itself when >= 1, else ceil(bound_th * diagonal)."""
    return int(bound_th) if bound_th >= 1 else math.ceil(bound_th * math.hypot(*shape[:2]))


def dilate(boundary: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by the disk x^2 + y^2 <= radius^2 (skimage.morphology.disk)."""
    if not boundary.any():
        return np.zeros_like(boundary, dtype=bool)
    return _ndimage().distance_transform_edt(~boundary) <= radius


def boundary_measure(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None,
                     bound_th: float = BOUND_TH) -> tuple[float, float, float]:
    """(F, precision, recall) of the boundaries of two boolean masks."""
    pred, gt = pred.astype(bool), gt.astype(bool)
    if void is not None:
        pred, gt = pred & ~void.astype(bool), gt & ~void.astype(bool)
    radius = tolerance(gt.shape, bound_th)
    pb, gb = boundary_map(pred), boundary_map(gt)
    n_pred, n_gt = np.count_nonzero(pb), np.count_nonzero(gb)
    if n_pred == 0 and n_gt == 0:
        return 1.0, 1.0, 1.0
    if n_pred == 0:
        return 0.0, 1.0, 0.0
    if n_gt == 0:
        return 0.0, 0.0, 1.0
    precision = np.count_nonzero(pb & dilate(gb, radius)) / n_pred
    recall = np.count_nonzero(gb & dilate(pb, radius)) / n_gt
    f = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return f, precision, recall


def boundary_f(pred, gt, void=None, bound_th: float = BOUND_TH) -> float:
    return boundary_measure(pred, gt, void, bound_th)[0]


def statistics(values) -> dict:
    """Mean, recall (> 0.5) and decay of one object's per-frame scores (DAVIS db_statistics)."""
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return {"mean": float("nan"), "recall": float("nan"), "decay": float("nan")}
    ids = (np.round(np.linspace(1, len(v), 5) + 1e-10) - 1).astype(np.int64)
    bins = [v[ids[i]: ids[i + 1] + 1] for i in range(4)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        decay = float(np.nanmean(bins[0]) - np.nanmean(bins[3]))
    return {"mean": float(np.nanmean(v)), "recall": float(np.nanmean(v > 0.5)), "decay": decay}
