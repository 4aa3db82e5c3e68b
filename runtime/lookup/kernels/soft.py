"""The soft mode of the sparse lookup: per query, weights over a growing disk until the neglected
mass is provably below the tolerance. Distances in explicit 8-lane vectors, weights by LLVM's loop
vectoriser (fastmath, a polynomial exp), the C-channel accumulation with 8-lane FMAs. Hot loops
index with unsigned integers, for which numba emits no negative-index wraparound."""

from __future__ import annotations

import math

import numpy as np

from runtime.lookup.kernels.grid import DIST_MARGIN, FAR, argmax_first, grow, tail_bound
from runtime.lookup.kernels.jit import jit
from runtime.lookup.kernels.simd import (
    exp_neg,
    v8_add,
    v8_fma,
    v8_hmin,
    v8_load,
    v8_min,
    v8_norm,
    v8_splat,
    v8_store,
    v8_sub,
)


@jit
def _gather(kx, ky, rng, nr, jb, n, xf, yf, db):
    """Append the pixels of the nr ranges at n: distances from (xf, yf) to db, sorted positions to jb.
    Returns the new count and the smallest distance appended (inf if none).

    8 pixels at a time: the last vector of a range also reads pixels after it (other cells' pixels,
    or the far-away padding at the end of kx/ky); the next range overwrites those lanes, and the
    caller puts padding after the last one. Those lanes are real pixels (or far away), so they never
    make the minimum smaller than the nearest pixel's distance, and a minimum below the disk's
    radius is a pixel inside the disk, hence one that is evaluated."""
    dmin = v8_splat(np.float32(np.inf))
    qxv = v8_splat(xf)
    qyv = v8_splat(yf)
    for t in range(nr):
        a = rng[np.uint64(t), 0]
        b = rng[np.uint64(t), 1]
        for j in range(a, b, 8):
            d = v8_norm(v8_sub(qxv, v8_load(kx, j)), v8_sub(qyv, v8_load(ky, j)))
            v8_store(db, n + j - a, d)
            dmin = v8_min(dmin, d)
        for j in range(b - a):
            jb[np.uint64(n + j)] = a + j
        n += b - a
    return n, v8_hmin(dmin)


@jit(fastmath=True)
def _sum64(k0, k1, wb, vf, ucp, ucb, jb, acc):
    """acc[cb:cb + 64] += sum over k in [k0, k1) of wb[k] * V[jb[k], cb:cb + 64]: 8 vectors held in
    registers while the pairs stream by, each row's 256 contiguous bytes read once (many labels)."""
    a0 = v8_splat(np.float32(0.0))
    a1, a2, a3, a4, a5, a6, a7 = a0, a0, a0, a0, a0, a0, a0
    for k in range(np.uint64(k0), np.uint64(k1)):
        w = wb[k]
        b = np.uint64(jb[k]) * ucp + ucb
        a0 = v8_fma(a0, w, v8_load(vf, b))
        a1 = v8_fma(a1, w, v8_load(vf, b + np.uint64(8)))
        a2 = v8_fma(a2, w, v8_load(vf, b + np.uint64(16)))
        a3 = v8_fma(a3, w, v8_load(vf, b + np.uint64(24)))
        a4 = v8_fma(a4, w, v8_load(vf, b + np.uint64(32)))
        a5 = v8_fma(a5, w, v8_load(vf, b + np.uint64(40)))
        a6 = v8_fma(a6, w, v8_load(vf, b + np.uint64(48)))
        a7 = v8_fma(a7, w, v8_load(vf, b + np.uint64(56)))
    for t, a in enumerate((a0, a1, a2, a3, a4, a5, a6, a7)):
        u = ucb + np.uint64(8 * t)
        v8_store(acc, u, v8_add(a, v8_load(acc, u)))


@jit(fastmath=True)
def _weigh(db, k0, k1, d0, inv_tau, wb, vf, cp, jb, acc):
    """wb[k] = exp(-(db[k] - d0) / tau) for k in [k0, k1) (db holds padding lanes up to the next
    multiple of 32), acc[:cp] += sum of wb[k] * V[jb[k]] (64 channels at a time while they last,
    then 8 at a time with 4 chains); returns the sum of the weights."""
    z = np.float32(0.0)
    for k in range((k1 - k0 + 31) & ~31):
        u = np.uint64(k0 + k)
        d = db[u]
        w = exp_neg((d0 - d) * inv_tau)
        w = w if d < np.float32(1e3) else np.float32(0.0)
        wb[u] = w
        z += w
    # (unsigned indices: no negative-index wraparound code in the hot loop)
    ucp = np.uint64(cp)
    end = np.uint64(k1)
    wide = cp - cp % 64
    for cb in range(0, wide, 64):
        _sum64(k0, k1, wb, vf, ucp, np.uint64(cb), jb, acc)
    for cb in range(wide, cp, 8):
        ucb = np.uint64(cb)
        a0 = v8_splat(np.float32(0.0))
        a1 = a0
        a2 = a0
        a3 = a0
        k = np.uint64(k0)
        while k + np.uint64(3) < end:
            a0 = v8_fma(a0, wb[k], v8_load(vf, np.uint64(jb[k]) * ucp + ucb))
            a1 = v8_fma(a1, wb[k + np.uint64(1)], v8_load(vf, np.uint64(jb[k + np.uint64(1)]) * ucp + ucb))
            a2 = v8_fma(a2, wb[k + np.uint64(2)], v8_load(vf, np.uint64(jb[k + np.uint64(2)]) * ucp + ucb))
            a3 = v8_fma(a3, wb[k + np.uint64(3)], v8_load(vf, np.uint64(jb[k + np.uint64(3)]) * ucp + ucb))
            k += np.uint64(4)
        while k < end:
            a0 = v8_fma(a0, wb[k], v8_load(vf, np.uint64(jb[k]) * ucp + ucb))
            k += np.uint64(1)
        v8_store(acc, cb, v8_add(v8_add(v8_add(a0, a1), v8_add(a2, a3)), v8_load(acc, cb)))
    return z


@jit(nogil=True)
def soft(q0, q1, qx, qy, kx, ky, vf, cp, start, sat, geo, tau, tol, out, labels, stats):
    """Soft lookup of queries q0..q1-1 into out[:, q] (C, Nq) and labels[q] (argmax, first maximum);
    stats[0] += pixels evaluated.

    Per query: the nearest distance d0 (grow the disk until it holds a pixel closer than its radius),
    then weights exp(-(d - d0)/tau) over the evaluated pixels, growing the disk until the bound on
    the weight of the rest (tail_bound) is <= tol * (their sum). The first radius is guessed from
    the previous query (neighbouring queries need about the same)."""
    c = out.shape[0]
    m = kx.shape[0] - 8
    gy = int(geo[5])
    inv_tau = np.float32(1.0 / tau)
    lam_min = 1.0
    acc = np.zeros(cp, np.float32)
    rng = np.empty((2 * gy + 2, 2), np.int64)
    lo_c = np.empty(gy, np.int64)
    hi_c = np.empty(gy, np.int64)
    rows = np.empty(2, np.int64)
    db = np.empty(m + 64, np.float32)
    wb = np.empty(m + 64, np.float32)
    jb = np.empty(m + 64, np.int64)
    rho_min = 0.75 * (geo[2] + geo[3])
    lam = 12.0  # first radius = previous d0 + lam * tau, lam from the previous query
    d_prev = 0.0
    pairs = 0
    for i in range(q0, q1):
        xf = qx[i]
        yf = qy[i]
        x = np.float64(xf)
        y = np.float64(yf)
        rows[0] = 1
        rows[1] = 0
        rho = max(d_prev + lam * tau, rho_min)
        n = np.int64(0)  # (not the literal 0, which would compile a second signature of _gather)
        dmin = np.float32(np.inf)
        while True:  # nearest pixel: certain once it is closer than the disk's radius
            nr = grow(x, y, rho, geo, start, rows, lo_c, hi_c, rng)
            n, dnew = _gather(kx, ky, rng, nr, jb, n, xf, yf, db)
            dmin = min(dmin, dnew)
            if dmin <= rho - DIST_MARGIN or n == m:
                break
            rho *= 2.0
        d0 = dmin
        for f in range(n, n + 32, 8):  # padding lanes after the last pixel (earlier rounds' are overwritten)
            v8_store(db, f, v8_splat(FAR))
        for u in range(cp):
            acc[u] = 0.0
        z = _weigh(db, np.int64(0), n, d0, inv_tau, wb, vf, cp, jb, acc)
        while True:  # grow until the bound on the neglected weight is <= tol * z
            bound = tail_bound(x, y, rho, n, m, np.float64(d0), tau, geo, sat)
            if bound <= tol * z:
                break
            rho += tau * (max(math.log(bound / (tol * z)), 0.0) + 0.3)
            nr = grow(x, y, rho, geo, start, rows, lo_c, hi_c, rng)
            n1, _ = _gather(kx, ky, rng, nr, jb, n, xf, yf, db)
            if n1 > n:
                for f in range(n1, n1 + 32, 8):
                    v8_store(db, f, v8_splat(FAR))
                z += _weigh(db, n, n1, d0, inv_tau, wb, vf, cp, jb, acc)
            n = n1
        # next query: the radius this one needed (its bound's slack taken off), plus a little
        if bound > 0.0:
            lam = max(lam_min, (rho - d0) / tau - math.log(tol * z / bound) + 0.15)
        d_prev = np.float64(d0)
        pairs += n
        inv_z = np.float32(1.0) / z
        for u in range(c):
            out[u, i] = acc[u] * inv_z
        labels[i] = argmax_first(out, i)
    stats[0] += pairs
    return 0
