"""Label maps between frame size and the model's grid, as separable linear maps (numpy).

* Down (a reference mask -> probabilities at the grid G x G): per-label area averages, so a grid
  cell on a boundary holds the fraction of each label it covers (probabilities sum to 1).
* Up (grid probabilities -> frame size H x W): bilinear with half-pixel centres (align_corners
  False, edges clamped), the usual image convention; argmax afterwards gives the labels.

Both are `A_y @ X @ A_x^T` with small interpolation matrices, cached per size pair.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=32)
def area_matrix(src: int, dst: int) -> np.ndarray:
    """(dst, src) float32: row i averages the source pixels under destination cell i (by overlap)."""
    edges = np.arange(dst + 1, dtype=np.float64) * (src / dst)
    lo, hi = edges[:-1, None], edges[1:, None]
    pix = np.arange(src, dtype=np.float64)[None]
    overlap = np.clip(np.minimum(hi, pix + 1) - np.maximum(lo, pix), 0, None)
    return (overlap / overlap.sum(1, keepdims=True)).astype(np.float32)


@lru_cache(maxsize=32)
def bilinear_matrix(src: int, dst: int) -> np.ndarray:
    """(dst, src) float32 bilinear weights, half-pixel centres, clamped at the edges."""
    pos = np.clip((np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5, 0, src - 1)
    i0 = np.floor(pos).astype(np.int64)
    i1 = np.minimum(i0 + 1, src - 1)
    frac = pos - i0
    m = np.zeros((dst, src), np.float64)
    rows = np.arange(dst)
    np.add.at(m, (rows, i0), 1 - frac)
    np.add.at(m, (rows, i1), frac)
    return m.astype(np.float32)


def labels_to_grid(channels: np.ndarray, n_channels: int, grid: int) -> np.ndarray:
    """(H, W) channel indices -> (C, G, G) float32 probabilities (area fractions of each channel)."""
    h, w = channels.shape
    ay, ax = area_matrix(h, grid), area_matrix(w, grid)
    out = np.empty((n_channels, grid, grid), np.float32)
    for c in range(n_channels):  # one channel at a time: a full-size one-hot stack could be large
        out[c] = ay @ (channels == c).astype(np.float32) @ ax.T
    return out


def upsample(probs: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C, G, G) -> (C, H, W) float32, bilinear."""
    c, gh, gw = probs.shape
    h, w = size
    if (gh, gw) == (h, w):
        return probs
    by, bx = bilinear_matrix(gh, h), bilinear_matrix(gw, w)
    return by @ (probs @ bx.T)  # (H, G) @ (C, G, W) -> (C, H, W)


def upsample_argmax(probs: np.ndarray, size: tuple[int, int], rows: int = 256) -> np.ndarray:
    """Channel index of the largest upsampled probability, (H, W) intp, `rows` output rows at a time
    (the full (C, H, W) stack of a 4K frame with many labels would take gigabytes)."""
    c, gh, gw = probs.shape
    h, w = size
    if (gh, gw) == (h, w):
        return probs.argmax(0)
    by = bilinear_matrix(gh, h)
    # (G, C*W): one GEMM per block of rows gives (rows, C, W), and argmax over the middle axis
    across = np.ascontiguousarray((probs @ bilinear_matrix(gw, w).T).transpose(1, 0, 2)).reshape(gh, c * w)
    out = np.empty((h, w), np.intp)
    for r0 in range(0, h, rows):
        out[r0:r0 + rows] = (by[r0:r0 + rows] @ across).reshape(-1, c, w).argmax(1)
    return out
