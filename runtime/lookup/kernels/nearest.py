"""The hard and top-k modes of the sparse lookup: exact float32 distances (no fastmath: the dense
path's arithmetic), ties broken by the original pixel index, as the dense path breaks them."""

from __future__ import annotations

import math

import numpy as np

from runtime.lookup.kernels.grid import DIST_MARGIN, PAD, argmax_first, grow
from runtime.lookup.kernels.jit import jit


@jit
def _kth_smallest(a, n, kth):
    """The kth smallest (0-based) of a[:n], which is reordered (quickselect, median-of-3 pivots;
    np.partition would do, but takes numba several seconds to compile)."""
    lo = 0
    hi = n - 1
    while lo < hi:
        x, y, z = a[lo], a[(lo + hi) >> 1], a[hi]
        pivot = max(min(x, y), min(max(x, y), z))
        i = lo
        j = hi
        while i <= j:
            while a[i] < pivot:
                i += 1
            while a[j] > pivot:
                j -= 1
            if i <= j:
                a[i], a[j] = a[j], a[i]
                i += 1
                j -= 1
        if kth <= j:
            hi = j
        elif kth >= i:
            lo = i
        else:
            break
    return a[kth]


@jit(nogil=True)
def nearest_k(q0, q1, qx, qy, kx, ky, vt, order, start, geo, tau, k, out, labels, stats):
    """Top-k lookup (k = 1: hard, the nearest pixel's V) of queries q0..q1-1 into out[:, q] and
    labels[q].

    The disk grows until at least k pixels are closer than its radius (minus a rounding margin):
    then the k nearest pixels, and all pixels tied with the k-th, have been evaluated."""
    c = out.shape[0]
    m = kx.shape[0] - PAD
    sv = kx.shape[0]
    gy = int(geo[5])
    rng = np.empty((2 * gy + 2, 2), np.int64)
    lo_c = np.empty(gy, np.int64)
    hi_c = np.empty(gy, np.int64)
    rows = np.empty(2, np.int64)
    size = m if k > 1 else 1
    db = np.empty(size, np.float32)
    jb = np.empty(size, np.int64)
    sel = np.empty(size, np.float64)
    acc = np.zeros(c, np.float64)
    rho_min = 0.75 * (geo[2] + geo[3])
    rho_prev = rho_min
    neg_tau = np.float32(-tau)
    pairs = 0
    for i in range(q0, q1):
        xf = qx[i]
        yf = qy[i]
        x = np.float64(xf)
        y = np.float64(yf)
        rows[0] = 1
        rows[1] = 0
        rho = max(rho_prev, rho_min)
        n = 0
        best = np.float32(np.inf)
        best_j = m
        best_p = 0
        while True:
            nr = grow(x, x, y, y, rho, geo, start, rows, lo_c, hi_c, rng)
            for t in range(nr):
                for p in range(rng[t, 0], rng[t, 1]):
                    dx = xf - kx[p]
                    dy = yf - ky[p]
                    d = np.sqrt(dx * dx + dy * dy)
                    if k == 1:
                        if d < best or (d == best and order[p] < best_j):
                            best, best_j, best_p = d, order[p], p
                    else:
                        db[n] = d
                        jb[n] = p
                    n += 1
            if n == m:
                break
            lim = np.float32(rho - DIST_MARGIN)
            if k == 1:
                if best <= lim:
                    break
            else:
                inside = 0
                for q in range(n):
                    if db[q] <= lim:
                        inside += 1
                if inside >= k:
                    break
            rho *= 1.5
        pairs += n
        if k == 1:
            for u in range(c):
                out[u, i] = vt[u * sv + best_p]
            labels[i] = argmax_first(out, i)
            rho_prev = np.float64(best) + 2.0 * DIST_MARGIN
            continue
        # the k-th smallest distance, then the k pixels: all closer ones, ties by lowest pixel index
        for q in range(n):
            sel[q] = db[q]
        kth = np.float32(_kth_smallest(sel, np.int64(n), np.int64(k - 1)))
        d0 = db[0]
        closer = 0
        ties = 0
        for q in range(n):
            d0 = min(d0, db[q])
            if db[q] < kth:
                closer += 1
            elif db[q] == kth:
                sel[ties] = order[jb[q]]
                ties += 1
        j_cut = _kth_smallest(sel, np.int64(ties), np.int64(k - closer - 1))
        for u in range(c):
            acc[u] = 0.0
        z = 0.0
        for q in range(n):
            d = db[q]
            if d < kth or (d == kth and order[jb[q]] <= j_cut):
                w = np.float32(math.exp(max((d - d0) / neg_tau, np.float32(-50.0))))
                z += w
                for u in range(c):
                    acc[u] += w * vt[u * sv + jb[q]]
        for u in range(c):
            out[u, i] = acc[u] / z
        labels[i] = argmax_first(out, i)
        rho_prev = np.float64(kth) + 2.0 * DIST_MARGIN
    stats[0] += pairs
    return 0
