"""The soft mode of the sparse lookup: per query, weights over a growing disk until the neglected
mass is provably below the tolerance.

The disk is a list of pixel ranges (grid.grow adds them, row band by row band), read in place:
coordinates from the sorted kx/ky, probabilities from the channel-major vt, 16 pixels a vector (one
AVX-512 register, two AVX2 ones), a range's last vector masked. Distances are in log2 units (the
coordinates are scaled by log2(e) / tau), so a weight is one 2^x (simd.v_exp2_weight, five FMAs).
One pass over the pixels makes the weights, their sum, the 8 channel sums of the first 8 channels
(lane by lane, reduced once per query) and the nearest distance: the weights are relative to the
previous query's nearest distance, which differs little from this one's (made again where it
differs by more than REWEIGH), so the nearest pixel need not be found first. Per 16 pairs that is
about 15 FMA-pipe operations, 8 of them the channel sums (measured: BENCHMARKS.md)."""

from __future__ import annotations

import math

import numba
import numpy as np

from runtime.lookup.inputs import FLUSH_BELOW
from runtime.lookup.kernels.grid import DIST_MARGIN, PAD, argmax_first, grow, tail_bound
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
def _fma8(acc, w, vt, u, usv):
    """acc[t] += w * (the L pixels from u of channel t), t < 8 (channel rows usv apart)."""
    return (v_fma(acc[0], w, v16_load(vt, u)), v_fma(acc[1], w, v16_load(vt, u + usv)),
            v_fma(acc[2], w, v16_load(vt, u + 2 * usv)), v_fma(acc[3], w, v16_load(vt, u + 3 * usv)),
            v_fma(acc[4], w, v16_load(vt, u + 4 * usv)), v_fma(acc[5], w, v16_load(vt, u + 5 * usv)),
            v_fma(acc[6], w, v16_load(vt, u + 6 * usv)), v_fma(acc[7], w, v16_load(vt, u + 7 * usv)))


@jit(fastmath=True)
def _weigh(kx, ky, vt, sv, rl, r0, r1, xs, ys, d_ref, accb, wb):
    """Add the pixels of ranges r0..r1-1 to the lane accumulators accb, weights 2^(d_ref - d):
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
            acc = _fma8(acc, w, vt, np.uint64(j), usv)
            if c8 > 8:
                v_store(wb, nw, w)
                nw += L
    v_store(accb, 0, z)
    _store8(accb, L, acc)
    v_store(accb, (c8 + 1) * L, dm)
    for cb in range(8, c8, 8):
        _more_channels(vt, usv, rl, r0, r1, wb, cb, accb)


@jit(fastmath=True)
def _more_channels(vt, usv, rl, r0, r1, wb, cb, accb):
    """Channels cb..cb+7 of _weigh, from the weights it kept in wb."""
    o = (cb + 1) * L  # accb offset of channel cb
    acc = _load8(accb, o)
    nw = 0
    for t in range(r0, r1):
        a = rl[np.uint64(t), 0]
        b = rl[np.uint64(t), 1]
        for j in range(a, b, L):
            acc = _fma8(acc, v16_load(wb, nw), vt, np.uint64(j) + np.uint64(cb) * usv, usv)
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
    stats[0] += pixels evaluated.

    kxs, kys: the sorted pixel coordinates (grid.py) times ks = log2(e) / tau (the queries qx, qy are
    scaled here); vt: channel-major probabilities (grid.py), channels padded with zeros to a multiple
    of 8.

    Per query: grow the disk until it holds a pixel closer than its radius (the nearest, d0), weighing
    what it adds as it goes (weights 2^(d_ref - d), d_ref the previous query's d0), then keep growing
    until the bound on the weight of the rest (tail_bound) is <= tol * (their sum). The first radius
    is guessed from the previous query too (neighbouring queries need about the same)."""
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
    accb = np.empty((c8 + 2) * L, np.float32)  # weights, channels, smallest distance (L lanes each)
    wb = np.empty(m + L * rng.shape[0] if c8 > 8 else L, np.float32)  # a part-filled vector per range at most
    rho_min = 0.75 * (geo[2] + geo[3])
    lam = 12.0  # first radius = previous d0 + lam * tau, lam from the previous query
    d_prev = 0.0
    pairs = 0
    for i in range(q0, q1):
        x = np.float64(qx[i])
        y = np.float64(qy[i])
        xs = qx[i] * ks32
        ys = qy[i] * ks32
        rows[0] = 1
        rows[1] = 0
        rho = max(d_prev + lam * tau, rho_min)
        # Weights relative to the previous query's nearest distance (neighbouring queries' differ by
        # at most their distance), so that one pass finds the nearest pixel and weighs the disk.
        d_ref = np.float32(d_prev * ks)
        _reset(accb)
        n = 0
        while True:  # nearest pixel: certain once it is closer than the disk's radius
            nr = grow(x, y, rho, geo, start, rows, lo_c, hi_c, rng)
            for t in range(nr):
                n += rng[t, 1] - rng[t, 0]
            _weigh(kxs, kys, vt, sv, rng, 0, nr, xs, ys, d_ref, accb, wb)
            d0s = v_hmin(v16_load(accb, (c8 + 1) * L))  # in log2 units, as the weigh loop computes it
            lim = (rho - DIST_MARGIN) * ks
            if (lim > 0.0 and d0s <= lim) or n == m:
                break
            rho *= 2.0
        if abs(d0s - d_ref) > REWEIGH:  # weights far from 1 (the first query of a chunk): again from d0
            d_ref = d0s
            _reset(accb)
            _weigh(kxs, kys, vt, sv, rl, 0, _band_spans(rows, lo_c, hi_c, start, geo, rl), xs, ys, d_ref, accb, wb)
        d0 = np.float64(d0s) / ks
        scale = np.exp2(np.float64(d0s) - np.float64(d_ref))  # to weights relative to the nearest pixel's
        while True:  # grow until the bound on the neglected weight is <= tol * z
            z = np.float64(v_hsum(v16_load(accb, 0))) * scale
            bound = tail_bound(x, y, rho, n, m, d0, tau, geo, sat)
            if bound <= tol * z:
                break
            rho += tau * (max(math.log(bound / (tol * z)), 0.0) + 0.3)
            nr = grow(x, y, rho, geo, start, rows, lo_c, hi_c, rng)
            for t in range(nr):
                n += rng[t, 1] - rng[t, 0]
            _weigh(kxs, kys, vt, sv, rng, 0, nr, xs, ys, d_ref, accb, wb)
        # next query: the radius this one needed (its bound's slack taken off), plus a little
        if bound > 0.0:
            lam = max(1.0, (rho - d0) / tau - math.log(tol * z / bound) + 0.15)
        d_prev = d0
        pairs += n
        inv_z = np.float32(scale / z)  # (z is scaled, the sums are not)
        for u in range(c):
            p = v_hsum(v16_load(accb, (u + 1) * L)) * inv_z
            out[u, i] = p if p >= FLUSH_BELOW else np.float32(0.0)  # as inputs.flush_tiny
        labels[i] = argmax_first(out, i)
    stats[0] += pairs
    return 0
