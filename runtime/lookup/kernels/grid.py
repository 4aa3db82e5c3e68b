"""The reference pixels of one batch item bucketed into a grid of cells, and the geometry of a query's disk.

The pixels are bucketed by :func:`sort_grid` into a gx x gy grid of cells over their bounding box
(sizes chosen by ``runtime.lookup.sparse._grid``; :func:`gather_channels` then lays their
probabilities out in the same order, on the caller's threads): cells are ordered row-major (row = y band,
column = x), and the pixels are stored sorted by cell, so the cells ``lo..hi`` of one row are one
contiguous slice of the pixel arrays. Arrays:

    kx, ky (M + PAD,) float32       pixel coordinates, sorted by cell, then PAD far-away entries
    vt (c8 * sv,) float32           V channel-major in the same order: channel u of pixel p at
                                    vt[u * sv + p], sv = M + PAD, c8 = C rounded up to 8 (zero padded)
    order (M,) int64                sorted position -> original pixel index j = (r, y, x)
    start (gx * gy + 1,) int64      pixels of cell c are start[c] : start[c + 1]
    sat (gy + 1, gx + 1) int64      summed-area table of pixels per cell (counts of any cell rectangle)
    geo (6,) float64                x0, y0, cell width sx, cell height sy, gx, gy

A query grows a disk of radius rho around itself; :func:`grow` adds, row band by row band, the
cells that can hold a pixel closer than rho, as contiguous pixel ranges; :func:`tail_bound` bounds
the weight of the pixels outside it (the derivation: the module docstring of ``runtime.lookup.sparse``).

Cell of a coordinate: min(n - 1, int(max(v - lo, 0) / s)), the same float64 arithmetic as the
bucketing, so a pixel at v lies in the cell the kernel computes for v, and the cell index is
monotone in v. EPS (>> float64 rounding) widens every range the kernels cover.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from runtime.lookup import spec
from runtime.lookup.kernels.jit import jit

EPS = 1e-6
# A pixel is certainly not within rho when its float32 distance is >= rho - DIST_MARGIN (float32
# distances of magnitude <= 3 are off by < 1e-6).
DIST_MARGIN = 1e-5
# Shell radii of the tail bound, rho + OFFSETS * tau, and exp(-OFFSETS).
OFFSETS = np.array([0.5, 1.0, 1.5, 2.0, 3.0, 4.5, 7.0, 10.0])
_DECAY = np.exp(-OFFSETS)
LOGIT_FLOOR_WEIGHT = math.exp(spec.LOGIT_FLOOR)
# Padding coordinate after the last pixel: finite, far from every query (the lanes it fills are masked).
FAR = np.float32(1e4)
# Entries after the last pixel: the kernels read whole 16-lane vectors.
PAD = 16


@numba.njit(inline="always")
def cell_of(v, lo, inv_s, n):
    return min(n - 1, int(max(v - lo, 0.0) * inv_s))


@jit
def grow(xa, xb, ya, yb, rho, geo, start, rows, lo_c, hi_c, rng):
    """Extend the cell set of the queries in the box [xa, xb] x [ya, yb] (one query: xa == xb, ya ==
    yb) to every cell that can hold a pixel closer than rho to the box.

    rows[0..1]: first and last row band in the set (rows[0] > rows[1]: empty set); lo_c/hi_c: the
    set's column span per row. Writes the pixel ranges (sorted positions) of the added cells to rng
    and returns how many there are. Within a row band at vertical gap g from the box, a pixel
    closer than rho to a point of the box is less than sqrt(rho^2 - g^2) left of xa or right of xb,
    so its cell lies in the span computed below."""
    x0, y0, sx, sy = geo[0], geo[1], geo[2], geo[3]
    gx, gy = int(geo[4]), int(geo[5])
    inv_sx, inv_sy = 1.0 / sx, 1.0 / sy
    r0 = cell_of(ya - rho - EPS, y0, inv_sy, gy)
    r1 = cell_of(yb + rho + EPS, y0, inv_sy, gy)
    e0, e1 = rows[0], rows[1]
    n = 0
    for r in range(r0, r1 + 1):
        yr = y0 + r * sy
        g = max(0.0, yr - yb, ya - (yr + sy)) - EPS
        g = max(g, 0.0)
        h2 = rho * rho - g * g
        h = math.sqrt(h2) if h2 > 0.0 else 0.0
        lo = cell_of(xa - h - EPS, x0, inv_sx, gx)
        hi = cell_of(xb + h + EPS, x0, inv_sx, gx)
        base = r * gx
        if e0 <= r <= e1:
            ol, oh = lo_c[np.uint64(r)], hi_c[np.uint64(r)]
            if lo < ol:
                a, b = start[np.uint64(base + lo)], start[np.uint64(base + ol)]
                if b > a:
                    rng[np.uint64(n), 0] = a
                    rng[np.uint64(n), 1] = b
                    n += 1
            else:
                lo = ol
            if hi > oh:
                a, b = start[np.uint64(base + oh + 1)], start[np.uint64(base + hi + 1)]
                if b > a:
                    rng[np.uint64(n), 0] = a
                    rng[np.uint64(n), 1] = b
                    n += 1
            else:
                hi = oh
        else:
            a, b = start[np.uint64(base + lo)], start[np.uint64(base + hi + 1)]
            if b > a:
                rng[np.uint64(n), 0] = a
                rng[np.uint64(n), 1] = b
                n += 1
        lo_c[np.uint64(r)] = lo
        hi_c[np.uint64(r)] = hi
    if e0 <= e1:
        rows[0], rows[1] = min(r0, e0), max(r1, e1)
    else:
        rows[0], rows[1] = r0, r1
    return n


@numba.njit(inline="always")
def square_count(xa, xb, ya, yb, h, geo, sat):
    """Pixels in the cells meeting [xa - h, xb + h] x [ya - h, yb + h] (>= those within h of the box)."""
    inv_sx, inv_sy = 1.0 / geo[2], 1.0 / geo[3]
    gx, gy = int(geo[4]), int(geo[5])
    c0 = cell_of(xa - h - EPS, geo[0], inv_sx, gx)
    c1 = cell_of(xb + h + EPS, geo[0], inv_sx, gx) + 1
    r0 = cell_of(ya - h - EPS, geo[1], inv_sy, gy)
    r1 = cell_of(yb + h + EPS, geo[1], inv_sy, gy) + 1
    return sat[r1, c1] - sat[r0, c1] - sat[r1, c0] + sat[r0, c0]


@jit
def tail_bound(xa, xb, ya, yb, rho, n_eval, m, d0, tau, geo, sat):
    """Upper bound on the sum over the not-evaluated pixels u of exp(-(d_u - d0)/tau) for a query in
    the box [xa, xb] x [ya, yb], given that every one of them is farther than rho from it and the n_eval
    evaluated ones lie in the cells that rho around the box reaches (the derivation: runtime.lookup.sparse;
    pixels within r of the query lie within r of the box). Without the logit floor's term, the
    caller's to add ((m - n_eval) * LOGIT_FLOOR_WEIGHT): what is returned is proportional to
    exp(d0 / tau), so queries sharing a box scale one value."""
    u = m - n_eval
    if u == 0:
        return 0.0
    r0 = rho - DIST_MARGIN  # a lower bound on the float32 distance of every not-evaluated pixel
    e0 = math.exp((d0 - r0) / tau)
    e_prev = e0
    t = 0.0
    for i in range(OFFSETS.shape[0]):
        r = r0 + OFFSETS[i] * tau
        # pixels within r, not evaluated: at most those of the cells meeting the square of half-width
        # max(r, rho) around the box (which also holds every evaluated pixel) minus the evaluated ones
        f = square_count(xa, xb, ya, yb, max(r, rho), geo, sat) - n_eval
        if f >= u:  # every remaining pixel is within this shell: the rest of the sum telescopes
            return t + u * e_prev
        e_next = e0 * _DECAY[i]
        t += f * (e_prev - e_next)
        e_prev = e_next
    return t + u * e_prev


@numba.njit(inline="always")
def argmax_first(out, i):
    """First maximum of out[:, i], as numpy's argmax."""
    best = 0
    for u in range(1, out.shape[0]):
        if out[u, i] > out[best, i]:
            best = u
    return best


@jit
def sort_grid(kx, ky, geo, order, start, sat, kxs, kys):
    """Bucket the pixels (kx, ky) into the grid geo: stable counting sort by cell (fills order, start,
    the summed-area table sat, and the sorted kxs, kys; the padding entries are left as they are)."""
    m = kx.shape[0]
    gx, gy = int(geo[4]), int(geo[5])
    inv_sx, inv_sy = 1.0 / geo[2], 1.0 / geo[3]
    cell = np.empty(m, np.int64)
    for t in range(gx * gy + 1):
        start[t] = 0
    for j in range(m):
        cj = cell_of(np.float64(ky[j]), geo[1], inv_sy, gy) * gx + cell_of(np.float64(kx[j]), geo[0], inv_sx, gx)
        cell[j] = cj
        start[cj + 1] += 1
    for t in range(gx * gy):
        start[t + 1] += start[t]
    fill = np.empty(gx * gy, np.int64)
    for t in range(gx * gy):
        fill[t] = start[t]
    for j in range(m):
        p = fill[cell[j]]
        fill[cell[j]] += 1
        order[p] = j
        kxs[p] = kx[j]
        kys[p] = ky[j]
    for t in range(gx + 1):
        sat[0, t] = 0
    for r in range(gy):
        sat[r + 1, 0] = 0
        row = 0
        for t in range(gx):
            row += start[r * gx + t + 1] - start[r * gx + t]
            sat[r + 1, t + 1] = sat[r, t + 1] + row
    return 0


@jit(nogil=True)
def gather_channels(vpm, order, p0, p1, vt):
    """vt[u * sv + p] = vpm[order[p], u] for sorted positions p0..p1-1: the probabilities pixel-major
    (one cache line per pixel read), written channel-major (sv = len(vt) // (C rounded up to 8))."""
    c = vpm.shape[1]
    sv = vt.shape[0] // (-(-c // 8) * 8)
    for p in range(p0, p1):
        j = order[p]
        for u in range(c):
            vt[u * sv + p] = vpm[j, u]
    return 0
