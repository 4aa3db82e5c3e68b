"""The soft mode of the sparse lookup: per query, or per pair of neighbouring queries sharing one
disk, weights over a growing disk until each one's neglected mass is provably below the tolerance.

The disk is a list of pixel ranges (grid.grow adds them, row band by row band), read in place:
coordinates from the sorted kx/ky, probabilities from the channel-major vt, 16 pixels a vector (one
AVX-512 register, two AVX2 ones), a range's last vector masked. Distances are in log2 units (the
coordinates are scaled by log2(e) / tau), so a weight is one 2^x (simd.v_exp2_weight, five FMAs).
One pass over the pixels makes the weights, their sum, the 8 channel sums of the first 8 channels
(lane by lane, reduced once per query) and the nearest distance: the weights are relative to a
nearby earlier query's nearest distance (the same slot of the previous pair), which differs little
from this one's (made again where it differs by more than REWEIGH), so the nearest pixel need not be
found first. Per 16 pairs that is about 15 FMA-pipe operations, 8 of them the channel sums
(measured: BENCHMARKS.md). A pair's pass
(_weigh_two) loads each vector once for both queries, and pays the ranges' loops, the growing and
the tail bound's counts once: 1.09-1.11x faster at memory 3 for 9.5 % more pairs (BENCHMARKS.md)."""

from __future__ import annotations

import math

import numba
import numpy as np

from runtime.lookup.inputs import FLUSH_BELOW
from runtime.lookup.kernels.grid import DIST_MARGIN, LOGIT_FLOOR_WEIGHT, PAD, argmax_first, grow, tail_bound
from runtime.lookup.kernels.jit import jit
from runtime.lookup.kernels.simd import (
    v16_load,
    v16_splat,
    v_add,
    v_exp2_weight,
    v_fma,
    v_hmin,
    v_hsum,
    v_min,
    v_mul,
    v_norm,
    v_store,
    v_sub,
)

L = 16  # lanes per vector
# Neighbouring queries share a disk where their coordinates are within this many tau (L1): the shared
# disk is then a few per cent larger than each one's (measured: BENCHMARKS.md).
PAIR_WITHIN = 4.0
# Weights are made relative to a reference distance; where the nearest pixel's differs from it by more
# than this (log2 units: a factor 2^16), they are made again relative to the nearest's.
REWEIGH = 16.0
# Loaded at L - r: r lanes of ones then zeros (the weights of a range's last vector), and r zeros
# then inf (its distances, for the minimum).
_KEEP = np.array([1.0] * L + [0.0] * L, np.float32)
_FAR = np.array([0.0] * L + [np.inf] * L, np.float32)


@numba.njit(inline="always")
def _load8(accb, o):
    """The 8 channel accumulators at accb[o:], L lanes each."""
    return (v16_load(accb, o), v16_load(accb, o + L), v16_load(accb, o + 2 * L), v16_load(accb, o + 3 * L),
            v16_load(accb, o + 4 * L), v16_load(accb, o + 5 * L), v16_load(accb, o + 6 * L), v16_load(accb, o + 7 * L))


@numba.njit(inline="always")
def _store8(accb, o, acc):
    for t in numba.literal_unroll((0, 1, 2, 3, 4, 5, 6, 7)):
        v_store(accb, o + t * L, acc[t])


@numba.njit(inline="always")
def _vt8(vt, u, usv):
    """The L pixels from u of channels 0..7 (channel rows usv apart)."""
    return (v16_load(vt, u), v16_load(vt, u + usv), v16_load(vt, u + 2 * usv), v16_load(vt, u + 3 * usv),
            v16_load(vt, u + 4 * usv), v16_load(vt, u + 5 * usv), v16_load(vt, u + 6 * usv), v16_load(vt, u + 7 * usv))


@numba.njit(inline="always")
def _fma8(acc, w, v):
    """acc[t] += w * v[t], t < 8."""
    return (v_fma(acc[0], w, v[0]), v_fma(acc[1], w, v[1]), v_fma(acc[2], w, v[2]), v_fma(acc[3], w, v[3]),
            v_fma(acc[4], w, v[4]), v_fma(acc[5], w, v[5]), v_fma(acc[6], w, v[6]), v_fma(acc[7], w, v[7]))


@jit(fastmath=True)
def _weigh_one(kx, ky, vt, sv, rl, r0, r1, xs, ys, d_ref, accb, wb):
    """Add the pixels of ranges r0..r1-1 to the lane accumulators accb of one query at (xs, ys), weights
    2^(d_ref - d):
    [0:L] the weights, then L lanes per channel (8 channels, the first block, in registers while the
    weights are made), then the smallest distance. With more channels the weights are kept in wb and
    the other blocks of 8 channels are summed after."""
    qxv = v16_splat(xs)
    qyv = v16_splat(ys)
    c8 = accb.shape[0] // L - 2
    usv = np.uint64(sv)
    z = v16_load(accb, 0)
    acc = _load8(accb, L)
    dm = v16_load(accb, (c8 + 1) * L)
    nw = 0
    for t in range(r0, r1):
        a = rl[np.uint64(t), 0]
        b = rl[np.uint64(t), 1]
        for j in range(a, b, L):
            d = v_norm(v_sub(qxv, v16_load(kx, j)), v_sub(qyv, v16_load(ky, j)))
            w = v_exp2_weight(d_ref, d)
            if j + L > b:  # lanes past the range: other cells' pixels
                w = v_mul(w, v16_load(_KEEP, L - (b - j)))
                d = v_add(d, v16_load(_FAR, L - (b - j)))
            dm = v_min(dm, d)
            z = v_add(z, w)
            acc = _fma8(acc, w, _vt8(vt, np.uint64(j), usv))
            if c8 > 8:
                v_store(wb, nw, w)
                nw += L
    v_store(accb, 0, z)
    _store8(accb, L, acc)
    v_store(accb, (c8 + 1) * L, dm)
    for cb in range(8, c8, 8):
        _more_channels(vt, usv, rl, r0, r1, wb, cb, accb)


@jit(fastmath=True)
def _weigh_two(kx, ky, vt, sv, rl, r0, r1, xs, ys, d_ref, accb, wb):
    """_weigh_one for two queries at once, at (xs[k], ys[k]) with d_ref[k], into accb[k] and wb[k]: each
    vector of pixels is loaded once for both."""
    qxa, qya, qxb, qyb = v16_splat(xs[0]), v16_splat(ys[0]), v16_splat(xs[1]), v16_splat(ys[1])
    da, db = d_ref[0], d_ref[1]
    acc_a, acc_b = accb[0], accb[1]
    c8 = acc_a.shape[0] // L - 2
    usv = np.uint64(sv)
    za, zb = v16_load(acc_a, 0), v16_load(acc_b, 0)
    sa, sb = _load8(acc_a, L), _load8(acc_b, L)
    dma, dmb = v16_load(acc_a, (c8 + 1) * L), v16_load(acc_b, (c8 + 1) * L)
    nw = 0
    for t in range(r0, r1):
        a = rl[np.uint64(t), 0]
        b = rl[np.uint64(t), 1]
        for j in range(a, b, L):
            kxv, kyv = v16_load(kx, j), v16_load(ky, j)
            d1 = v_norm(v_sub(qxa, kxv), v_sub(qya, kyv))
            d2 = v_norm(v_sub(qxb, kxv), v_sub(qyb, kyv))
            w1 = v_exp2_weight(da, d1)
            w2 = v_exp2_weight(db, d2)
            if j + L > b:  # lanes past the range: other cells' pixels
                keep, far = v16_load(_KEEP, L - (b - j)), v16_load(_FAR, L - (b - j))
                w1, w2 = v_mul(w1, keep), v_mul(w2, keep)
                d1, d2 = v_add(d1, far), v_add(d2, far)
            dma, dmb = v_min(dma, d1), v_min(dmb, d2)
            za, zb = v_add(za, w1), v_add(zb, w2)
            v = _vt8(vt, np.uint64(j), usv)  # loaded once for both
            sa, sb = _fma8(sa, w1, v), _fma8(sb, w2, v)
            if c8 > 8:
                v_store(wb[0], nw, w1)
                v_store(wb[1], nw, w2)
                nw += L
    v_store(acc_a, 0, za)
    v_store(acc_b, 0, zb)
    _store8(acc_a, L, sa)
    _store8(acc_b, L, sb)
    v_store(acc_a, (c8 + 1) * L, dma)
    v_store(acc_b, (c8 + 1) * L, dmb)
    for cb in range(8, c8, 8):
        _more_channels(vt, usv, rl, r0, r1, wb[0], cb, acc_a)
        _more_channels(vt, usv, rl, r0, r1, wb[1], cb, acc_b)


@numba.njit(inline="always")
def _weigh(kx, ky, vt, sv, rl, r0, r1, xs, ys, d_ref, accb, wb, both):
    """The pixels of ranges r0..r1-1 weighed for query 0, and query 1 too where `both`."""
    if both:
        _weigh_two(kx, ky, vt, sv, rl, r0, r1, xs, ys, d_ref, accb, wb)
    else:
        _weigh_one(kx, ky, vt, sv, rl, r0, r1, xs[0], ys[0], d_ref[0], accb[0], wb[0])


@jit(fastmath=True)
def _more_channels(vt, usv, rl, r0, r1, wb, cb, accb):
    """Channels cb..cb+7 of _weigh_one / _weigh_two, from the weights kept in wb."""
    o = (cb + 1) * L  # accb offset of channel cb
    acc = _load8(accb, o)
    nw = 0
    for t in range(r0, r1):
        a = rl[np.uint64(t), 0]
        b = rl[np.uint64(t), 1]
        for j in range(a, b, L):
            acc = _fma8(acc, v16_load(wb, nw), _vt8(vt, np.uint64(j) + np.uint64(cb) * usv, usv))
            nw += L
    _store8(accb, o, acc)


@jit
def _reset(accb):
    """Zero sums, no distance yet."""
    n = accb.shape[0] - L
    for u in range(n):
        accb[u] = 0.0
    for u in range(n, n + L):
        accb[u] = np.inf


@jit
def _band_spans(rows, lo_c, hi_c, start, geo, rl):
    """The disk's cells as one pixel range per row band (what the rounds of grow added), into rl;
    returns how many."""
    gx = int(geo[4])
    n = 0
    for r in range(rows[0], rows[1] + 1):
        a, b = start[r * gx + lo_c[r]], start[r * gx + hi_c[r] + 1]
        if b > a:
            rl[n, 0] = a
            rl[n, 1] = b
            n += 1
    return n


@jit(nogil=True)
def soft(q0, q1, qx, qy, ks, kxs, kys, vt, start, sat, geo, tau, tol, out, labels, stats):
    """Soft lookup of queries q0..q1-1 into out[:, q] (C, Nq) and labels[q] (argmax, first maximum);
    stats[0] += (query, pixel) pairs evaluated (a pixel a pair shares counts twice), stats[1] += queries
    that shared a disk.

    kxs, kys: the sorted pixel coordinates (grid.py) times ks = log2(e) / tau (the queries qx, qy are
    scaled here); vt: channel-major probabilities (grid.py), channels padded with zeros to a multiple
    of 8.

    Queries go in pairs of neighbours (q, q + 1) where their coordinates lie within PAIR_WITHIN tau
    of each other, else alone. A pair shares one disk around its bounding box: each pixel is loaded
    once for both, and the ranges, the growing and the loops' overhead are paid once for two, for
    a disk a little larger than each needs. Per pair (or query): grow the disk until it holds, for
    each query, a pixel closer than its radius (the nearest, d0), weighing what it adds as it goes
    (weights 2^(d_ref - d), d_ref the d0 of the previous pair's same slot), then keep growing until
    each query's bound on the weight of the rest (tail_bound) is <= tol * (its sum). The first radius
    is guessed from the previous pair too (neighbouring queries need about the same)."""
    c = out.shape[0]
    m = kxs.shape[0] - PAD
    sv = kxs.shape[0]
    c8 = vt.shape[0] // sv
    gy = int(geo[5])
    ks32 = np.float32(ks)
    rng = np.empty((2 * gy + 2, 2), np.int64)
    rl = np.empty((gy, 2), np.int64)  # the disk as one range per band
    lo_c = np.empty(gy, np.int64)
    hi_c = np.empty(gy, np.int64)
    rows = np.empty(2, np.int64)
    accb = np.empty((2, (c8 + 2) * L), np.float32)  # per query: weights, channels, smallest distance
    wb = np.empty((2, m + L * rng.shape[0] if c8 > 8 else L), np.float32)  # a part-filled vector per range at most
    xs = np.empty(2, np.float32)
    ys = np.empty(2, np.float32)
    d_ref = np.empty(2, np.float32)
    d0s = np.empty(2, np.float32)
    d_prev = np.zeros(2)
    near = PAIR_WITHIN * tau
    rho_min = 0.75 * (geo[2] + geo[3])
    lam = 12.0  # first radius = the previous larger d0 + lam * tau, lam from the previous pair
    pairs = shared = 0
    i = q0
    while i < q1:
        k = i + 1  # the pair (i, k), or i alone (k == i)
        if k == q1 or abs(qx[k] - qx[i]) + abs(qy[k] - qy[i]) > near:
            k = i
        both = k > i
        nq = 2 if both else 1
        xa, xb = min(np.float64(qx[i]), np.float64(qx[k])), max(np.float64(qx[i]), np.float64(qx[k]))
        ya, yb = min(np.float64(qy[i]), np.float64(qy[k])), max(np.float64(qy[i]), np.float64(qy[k]))
        xs[0], ys[0], xs[1], ys[1] = qx[i] * ks32, qy[i] * ks32, qx[k] * ks32, qy[k] * ks32
        rows[0] = 1
        rows[1] = 0
        rho = max(max(d_prev[0], d_prev[1]) + lam * tau, rho_min)
        # Weights relative to the previous nearest distances (neighbouring queries' differ by at most
        # their distance), so that one pass finds the nearest pixels and weighs the disk.
        d_ref[0], d_ref[1] = np.float32(d_prev[0] * ks), np.float32(d_prev[1] * ks)
        for s in range(nq):
            _reset(accb[s])
        n = 0
        while True:  # nearest pixels: certain once each is closer than the disk's radius
            nr = grow(xa, xb, ya, yb, rho, geo, start, rows, lo_c, hi_c, rng)
            for t in range(nr):
                n += rng[t, 1] - rng[t, 0]
            _weigh(kxs, kys, vt, sv, rng, 0, nr, xs, ys, d_ref, accb, wb, both)
            d0s[1] = -np.inf
            for s in range(nq):
                d0s[s] = v_hmin(v16_load(accb[s], (c8 + 1) * L))  # in log2 units, as the weigh loop computes it
            lim = (rho - DIST_MARGIN) * ks
            if (lim > 0.0 and max(d0s[0], d0s[1]) <= lim) or n == m:
                break
            rho *= 2.0
        if abs(d0s[0] - d_ref[0]) > REWEIGH or (both and abs(d0s[1] - d_ref[1]) > REWEIGH):
            # weights far from 1 (the first of a chunk, a jump): again, from the nearest distances
            d_ref[0], d_ref[1] = d0s[0], d0s[1]
            for s in range(nq):
                _reset(accb[s])
            nb = _band_spans(rows, lo_c, hi_c, start, geo, rl)
            _weigh(kxs, kys, vt, sv, rl, 0, nb, xs, ys, d_ref, accb, wb, both)
        d0_hi = max(np.float64(d0s[0]), np.float64(d0s[1])) / ks
        while True:  # grow until each query's bound on its neglected weight is <= tol * its z
            # The bound counts around the box, so the two queries' differ only by the factor exp(d0 / tau)
            # of its shells' part: made once; the floored weights' part, (m - n) e^-50, is the same.
            shells = tail_bound(xa, xb, ya, yb, rho, n, m, d0_hi, tau, geo, sat)
            floor = (m - n) * LOGIT_FLOOR_WEIGHT
            need = 0.0  # the larger ratio bound / (tol z)
            for s in range(nq):
                d0 = np.float64(d0s[s]) / ks
                z = np.float64(v_hsum(v16_load(accb[s], 0))) * np.exp2(np.float64(d0s[s]) - np.float64(d_ref[s]))
                need = max(need, (shells * math.exp((d0 - d0_hi) / tau) + floor) / (tol * z))
            if need <= 1.0:
                break
            rho += tau * (max(math.log(need), 0.0) + 0.3)
            nr = grow(xa, xb, ya, yb, rho, geo, start, rows, lo_c, hi_c, rng)
            for t in range(nr):
                n += rng[t, 1] - rng[t, 0]
            _weigh(kxs, kys, vt, sv, rng, 0, nr, xs, ys, d_ref, accb, wb, both)
        # next: the radius this one needed (its bounds' slack taken off), plus a little
        if need > 0.0:
            lam = max(1.0, (rho - d0_hi) / tau + math.log(need) + 0.15)
        d_prev[0] = np.float64(d0s[0]) / ks
        d_prev[1] = np.float64(d0s[1 if both else 0]) / ks
        pairs += nq * n
        shared += 2 if both else 0
        for s in range(nq):
            q = i if s == 0 else k
            inv_z = np.float32(1.0 / np.float64(v_hsum(v16_load(accb[s], 0))))  # (sums and z alike relative to d_ref)
            for u in range(c):
                p = v_hsum(v16_load(accb[s], (u + 1) * L)) * inv_z
                out[u, q] = p if p >= FLUSH_BELOW else np.float32(0.0)  # as inputs.flush_tiny
            labels[q] = argmax_first(out, q)
        i = k + 1
    stats[0] += pairs
    stats[1] += shared
    return 0
