"""The soft lookup over every reference pixel, compiled: the CPU path where the sparse cut cannot pay
(maps collapsed into a region smaller than the softmax's reach, a large tau).

Per block of queries, two passes over the reference pixels: the nearest distance d0 of each query
(8-lane vectors, squared distances), then, tile by tile, the weights exp(-(d - d0) / tau) (float32
distances, the polynomial exp of simd.exp_neg with the dense path's logit floor) and their
products with the label probabilities, summed per channel. The probabilities are stored channel-
major with a row of ones, so the same sums give P's numerator and its normaliser; four queries
share each channel's tile, which stays in L1; with many classes the host sums with BLAS instead
(weight_rows, then a matrix product per tile). Every pair is evaluated: the result is the dense
path's up to float32 rounding and the exp polynomial (relative error < 3e-6 per weight).

Arrays of one batch item:

    kx, ky (Mp,) float32        pixel coordinates, then far-away padding up to Mp = a multiple of TILE
    vt (C + 1, Mp) float32      V channel-major, a last row of ones; 0 in the padding
"""

from __future__ import annotations

import numpy as np

from runtime.lookup.kernels.grid import argmax_first
from runtime.lookup.kernels.jit import jit
from runtime.lookup.kernels.simd import exp_neg, v8_load, v8_splat, v_hmin, v_min, v_norm2, v_sub

TILE = 512  # reference pixels per tile: a channel's tile (2 KiB) and four weight rows stay in L1
ROWS = 4  # queries sharing each tile


@jit(nogil=True, fastmath=True)
def _nearest(x, y, kx, ky):
    """Distance from (x, y) to its nearest reference pixel (the minimum taken on squared distances: the
    same pixel, one square root)."""
    xv = v8_splat(x)
    yv = v8_splat(y)
    b0 = v8_splat(np.float32(np.inf))
    b1, b2, b3 = b0, b0, b0  # four chains: the loop is bound by min's throughput, not its latency
    for j in range(0, kx.shape[0], 32):
        b0 = v_min(b0, v_norm2(v_sub(xv, v8_load(kx, j)), v_sub(yv, v8_load(ky, j))))
        b1 = v_min(b1, v_norm2(v_sub(xv, v8_load(kx, j + 8)), v_sub(yv, v8_load(ky, j + 8))))
        b2 = v_min(b2, v_norm2(v_sub(xv, v8_load(kx, j + 16)), v_sub(yv, v8_load(ky, j + 16))))
        b3 = v_min(b3, v_norm2(v_sub(xv, v8_load(kx, j + 24)), v_sub(yv, v8_load(ky, j + 24))))
    return np.sqrt(v_hmin(v_min(v_min(b0, b1), v_min(b2, b3))))


@jit(nogil=True, fastmath=True)
def _weights(x, y, d0, kx, ky, j0, inv_tau, w, base):
    """w[base + u] = exp(max((d0 - |(x, y) - k_(j0 + u)|) / tau, -50)) for u < TILE."""
    for u in range(TILE):
        j = np.uint64(j0 + u)
        dx = x - kx[j]
        dy = y - ky[j]
        w[np.uint64(base + u)] = exp_neg((d0 - np.sqrt(dx * dx + dy * dy)) * inv_tau)


@jit(nogil=True, fastmath=True)
def _accumulate(w, rows, vt, j0, acc):
    """acc[r, c] += sum_u w[r * TILE + u] * vt[c, j0 + u] for r < rows (ROWS rows: one pass per channel)."""
    t = np.uint64(TILE)
    uj = np.uint64(j0)
    for c in range(vt.shape[0]):
        row = vt[c]
        if rows == ROWS:
            s0 = np.float32(0.0)
            s1 = np.float32(0.0)
            s2 = np.float32(0.0)
            s3 = np.float32(0.0)
            for u in range(TILE):
                uu = np.uint64(u)
                v = row[uj + uu]
                s0 += w[uu] * v
                s1 += w[t + uu] * v
                s2 += w[2 * t + uu] * v
                s3 += w[3 * t + uu] * v
            acc[0, c] += s0
            acc[1, c] += s1
            acc[2, c] += s2
            acc[3, c] += s3
        else:
            for r in range(rows):
                s = np.float32(0.0)
                base = np.uint64(r) * t
                for u in range(TILE):
                    s += w[base + np.uint64(u)] * row[uj + np.uint64(u)]
                acc[r, c] += s


@jit(nogil=True)
def soft_dense(q0, q1, qx, qy, kx, ky, vt, tau, out, labels):
    """Soft lookup of queries q0..q1-1 into out[:, q] (C, Nq) and labels[q] (argmax, first maximum)."""
    c1 = vt.shape[0]
    mp = kx.shape[0]
    inv_tau = np.float32(1.0 / tau)
    w = np.empty(ROWS * TILE, np.float32)
    acc = np.empty((ROWS, c1), np.float32)
    d0 = np.empty(ROWS, np.float32)
    for qb in range(q0, q1, ROWS):
        rows = min(ROWS, q1 - qb)
        for r in range(rows):
            d0[r] = _nearest(qx[qb + r], qy[qb + r], kx, ky)
        acc[:] = 0.0
        for j0 in range(0, mp, TILE):
            for r in range(rows):
                _weights(qx[qb + r], qy[qb + r], d0[r], kx, ky, j0, inv_tau, w, r * TILE)
            _accumulate(w, rows, vt, j0, acc)
        for r in range(rows):
            i = qb + r
            inv_z = np.float32(1.0) / acc[r, c1 - 1]
            for c in range(c1 - 1):
                out[c, i] = acc[r, c] * inv_z
            labels[i] = argmax_first(out, i)
    return 0


@jit(nogil=True)
def nearest_rows(qx, qy, kx, ky, d0):
    """d0[r] = distance from query r to its nearest reference pixel."""
    for r in range(qx.shape[0]):
        d0[r] = _nearest(qx[r], qy[r], kx, ky)
    return 0


@jit(nogil=True)
def weight_rows(qx, qy, d0, kx, ky, j0, tiles, tau, w):
    """w (rows, tiles * TILE), row r: the weights of query r for reference pixels j0 .. j0 + tiles * TILE,
    for a matrix product with the label probabilities (many classes: BLAS sums them faster)."""
    inv_tau = np.float32(1.0 / tau)
    width = tiles * TILE
    flat = w.reshape(-1)
    for r in range(qx.shape[0]):
        for t in range(tiles):
            _weights(qx[r], qy[r], d0[r], kx, ky, j0 + t * TILE, inv_tau, flat, r * width + t * TILE)
    return 0
