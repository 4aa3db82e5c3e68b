"""Compiled (numba) kernels of the sparse CPU lookup; imported by :mod:`runtime.lookup.cpu` on first use.

Everything here works on ONE batch item whose reference pixels were bucketed by
:func:`runtime.lookup.cpu._grid` into a gx x gy grid of cells over their bounding box: cells are
ordered row-major (row = y band, column = x), and the pixels are stored sorted by cell, so the
cells ``lo..hi`` of one row are one contiguous slice of the pixel arrays. Arrays:

    kx, ky (M + 8,) float32         pixel coordinates, sorted by cell (then 8 far-away padding entries)
    vf ((M + 8) * cp,) float32      V rows in the same order, cp = C rounded up to 8 (zero padded)
    order (M,) int64                sorted position -> original pixel index j = (r, y, x)
    start (gx * gy + 1,) int64      pixels of cell c are start[c] : start[c + 1]
    sat (gy + 1, gx + 1) int64      summed-area table of pixels per cell (counts of any cell rectangle)
    geo (6,) float64                x0, y0, cell width sx, cell height sy, gx, gy

A query grows a disk of radius rho around itself; :func:`_grow` adds, row band by row band, the
cells that can hold a pixel closer than rho, as contiguous pixel ranges. The soft kernel's stopping
rule and its error bound are written down in :func:`runtime.lookup.cpu.lookup_sparse`.

numba specifics: one compiled signature per kernel (all arrays C-contiguous, fixed dtypes), cached on
disk (``cache=True``; where the package directory and the user cache are read-only,
``NUMBA_CACHE_DIR`` or a per-user temp directory is used). Kernels release the GIL and take a query
range, so the caller's threads split the queries. The soft kernel's inner loops are vectorised:
distances with explicit 8-lane float32 vectors (LLVM ``<8 x float>`` values, see ``v8_*``), weights
by LLVM's loop vectoriser (fastmath, a polynomial exp), and the C-channel accumulation with 8-lane
FMAs. Hot loops index with unsigned integers, for which numba emits no negative-index wraparound.
"""

from __future__ import annotations

import math
import os
import tempfile

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic, models, register_model

# --------------------------------------------------------------------------------------------------
# njit with an on-disk cache that works where the package directory is read-only.


def _ensure_cache_dir() -> bool:
    """True when numba can cache next to this file, in the user cache or in NUMBA_CACHE_DIR; else
    point NUMBA_CACHE_DIR (numba.config.CACHE_DIR) at a per-user temp directory if that is writable."""
    from numba.core.caching import InTreeCacheLocator, UserProvidedCacheLocator, UserWideCacheLocator

    probe = _ensure_cache_dir  # any function defined in this file
    for locator in (UserProvidedCacheLocator, InTreeCacheLocator, UserWideCacheLocator):
        if locator.from_function(probe, __file__) is not None:
            return True
    fallback = os.path.join(tempfile.gettempdir(), f"coordgan-numba-{os.getuid() if hasattr(os, 'getuid') else 0}")
    try:
        os.makedirs(fallback, exist_ok=True)
        tempfile.TemporaryFile(dir=fallback).close()
    except OSError:
        return False
    numba.config.CACHE_DIR = fallback
    return UserProvidedCacheLocator.from_function(probe, __file__) is not None


CACHE = _ensure_cache_dir()


def _jit(*args, **kwargs):
    return numba.njit(*args, cache=CACHE, **kwargs)


# --------------------------------------------------------------------------------------------------
# 8 x float32 vectors (LLVM <8 x float>), kept in registers by the compiler.


class _F32x8(types.Type):
    def __init__(self) -> None:
        super().__init__(name="F32x8")


f32x8 = _F32x8()
_VEC = ir.VectorType(ir.FloatType(), 8)
_I32 = ir.IntType(32)


@register_model(_F32x8)
class _F32x8Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VEC)


def _vec_ptr(context, builder, arrty, arr, idx):
    data = context.make_array(arrty)(context, builder, arr).data
    return builder.bitcast(builder.gep(data, [idx]), _VEC.as_pointer())


def _splat(builder, value):
    v = builder.insert_element(ir.Constant(_VEC, ir.Undefined), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, ir.Constant(_VEC, ir.Undefined), ir.Constant(ir.VectorType(_I32, 8), [0] * 8))


def _f32_array(a) -> bool:
    return isinstance(a, types.Array) and a.dtype == types.float32


@intrinsic
def v8_splat(typingctx, w):
    """(w, w, ..., w)."""
    if w != types.float32:
        return None
    return f32x8(w), lambda context, builder, sig, args: _splat(builder, args[0])


@intrinsic
def v8_load(typingctx, arr, idx):
    """arr[idx : idx + 8] of a C-contiguous float32 array; NOT bounds checked."""
    if not (_f32_array(arr) and isinstance(idx, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        return builder.load(_vec_ptr(context, builder, sig.args[0], args[0], args[1]), align=4)

    return f32x8(arr, idx), codegen


@intrinsic
def v8_store(typingctx, arr, idx, vec):
    """arr[idx : idx + 8] = vec; NOT bounds checked."""
    if not (_f32_array(arr) and isinstance(idx, types.Integer) and vec == f32x8):
        return None

    def codegen(context, builder, sig, args):
        builder.store(args[2], _vec_ptr(context, builder, sig.args[0], args[0], args[1]), align=4)
        return context.get_dummy_value()

    return types.none(arr, idx, vec), codegen


@intrinsic
def v8_fma(typingctx, acc, w, x):
    """acc + w * x, w a float32 scalar broadcast to the 8 lanes, fused."""
    if not (acc == f32x8 and x == f32x8 and w == types.float32):
        return None

    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VEC, [_VEC] * 3), "llvm.fma.v8f32")
        return builder.call(fn, [_splat(builder, args[1]), args[2], args[0]])

    return f32x8(acc, w, x), codegen


@intrinsic
def v8_add(typingctx, a, b):
    if not (a == f32x8 and b == f32x8):
        return None
    return f32x8(a, b), lambda context, builder, sig, args: builder.fadd(args[0], args[1])


@intrinsic
def v8_sub(typingctx, a, b):
    if not (a == f32x8 and b == f32x8):
        return None
    return f32x8(a, b), lambda context, builder, sig, args: builder.fsub(args[0], args[1])


@intrinsic
def v8_norm(typingctx, dx, dy):
    """sqrt(dx * dx + dy * dy) lane by lane (the second product fused)."""
    if not (dx == f32x8 and dy == f32x8):
        return None

    def codegen(context, builder, sig, args):
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VEC, [_VEC] * 3), "llvm.fma.v8f32")
        sqrt = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VEC, [_VEC]), "llvm.sqrt.v8f32")
        return builder.call(sqrt, [builder.call(fma, [args[1], args[1], builder.fmul(args[0], args[0])])])

    return f32x8(dx, dy), codegen


@intrinsic
def v8_min(typingctx, a, b):
    if not (a == f32x8 and b == f32x8):
        return None

    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VEC, [_VEC] * 2), "llvm.minnum.v8f32")
        return builder.call(fn, args)

    return f32x8(a, b), codegen


@intrinsic
def v8_hmin(typingctx, a):
    """Smallest of the 8 lanes."""
    if a != f32x8:
        return None

    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.FloatType(), [_VEC]),
                                            "llvm.vector.reduce.fmin.v8f32")
        return builder.call(fn, args)

    return types.float32(a), codegen


@intrinsic
def _bits_as_f32(typingctx, x):
    """Reinterpret the low 32 bits of an integer as a float32."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = args[0]
        if v.type.width > 32:
            v = builder.trunc(v, _I32)
        return builder.bitcast(v, ir.FloatType())

    return types.float32(x), codegen


@numba.njit(inline="always", fastmath=True)
def _exp_neg(t):
    """exp(t) for float32 t clamped to [-50, 0] (-50: the logit floor of the dense path), relative error
    < 3e-6: t = n ln2 + r, |r| <= ln2 / 2, degree-6 Taylor polynomial for exp(r), 2^n from the exponent
    bits. Vectorisable, unlike a libm call."""
    t = min(max(t, np.float32(-50.0)), np.float32(0.0))
    nf = np.floor(t * np.float32(1.4426950408889634) + np.float32(0.5))
    r = t - nf * np.float32(0.6931471805599453)
    p = np.float32(1.0 / 720.0)
    p = p * r + np.float32(1.0 / 120.0)
    p = p * r + np.float32(1.0 / 24.0)
    p = p * r + np.float32(1.0 / 6.0)
    p = p * r + np.float32(0.5)
    p = p * r + np.float32(1.0)
    p = p * r + np.float32(1.0)
    return p * _bits_as_f32((np.int32(nf) + 127) << 23)


# --------------------------------------------------------------------------------------------------
# Grid geometry. Cell of a coordinate: min(n - 1, int(max(v - lo, 0) / s)), the same float64
# arithmetic as the numpy bucketing, so a pixel at v lies in the cell the kernel computes for v, and
# the cell index is monotone in v. EPS (>> float64 rounding) widens every range the kernel covers.

EPS = 1e-6
# A pixel is certainly not within rho when its float32 distance is >= rho - DIST_MARGIN (float32
# distances of magnitude <= 3 are off by < 1e-6).
DIST_MARGIN = 1e-5
# Shell radii of the tail bound, rho + OFFSETS * tau, and exp(-OFFSETS).
OFFSETS = np.array([0.5, 1.0, 1.5, 2.0, 3.0, 4.5, 7.0, 10.0])
_DECAY = np.exp(-OFFSETS)
_LOGIT_FLOOR_WEIGHT = math.exp(-50.0)
# Padding coordinate: its distance (> 1e3) marks vector lanes that hold no pixel.
_FAR = np.float32(1e4)


@numba.njit(inline="always")
def _cell(v, lo, inv_s, n):
    return min(n - 1, int(max(v - lo, 0.0) * inv_s))


@_jit
def _grow(x, y, rho, geo, start, rows, lo_c, hi_c, rng):
    """Extend the query's cell set to every cell that can hold a pixel closer than rho.

    rows[0..1]: first and last row band in the set (rows[0] > rows[1]: empty set); lo_c/hi_c: the
    set's column span per row. Writes the pixel ranges (sorted positions) of the added cells to rng
    and returns how many there are. Within a row band at vertical gap g from the query, a pixel
    closer than rho has |x - px| < sqrt(rho^2 - g^2), so its cell lies in the span computed below."""
    x0, y0, sx, sy = geo[0], geo[1], geo[2], geo[3]
    gx, gy = int(geo[4]), int(geo[5])
    inv_sx, inv_sy = 1.0 / sx, 1.0 / sy
    r0 = _cell(y - rho - EPS, y0, inv_sy, gy)
    r1 = _cell(y + rho + EPS, y0, inv_sy, gy)
    e0, e1 = rows[0], rows[1]
    n = 0
    for r in range(r0, r1 + 1):
        ya = y0 + r * sy
        g = max(0.0, ya - y, y - (ya + sy)) - EPS
        g = max(g, 0.0)
        h2 = rho * rho - g * g
        h = math.sqrt(h2) if h2 > 0.0 else 0.0
        lo = _cell(x - h - EPS, x0, inv_sx, gx)
        hi = _cell(x + h + EPS, x0, inv_sx, gx)
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
def _square_count(x, y, h, geo, sat):
    """Pixels in the cells meeting the square [x - h, x + h] x [y - h, y + h] (>= those within h)."""
    inv_sx, inv_sy = 1.0 / geo[2], 1.0 / geo[3]
    gx, gy = int(geo[4]), int(geo[5])
    c0 = _cell(x - h - EPS, geo[0], inv_sx, gx)
    c1 = _cell(x + h + EPS, geo[0], inv_sx, gx) + 1
    r0 = _cell(y - h - EPS, geo[1], inv_sy, gy)
    r1 = _cell(y + h + EPS, geo[1], inv_sy, gy) + 1
    return sat[r1, c1] - sat[r0, c1] - sat[r1, c0] + sat[r0, c0]


@_jit
def _tail_bound(x, y, rho, n_eval, m, d0, tau, geo, sat):
    """Upper bound on the sum over the not-evaluated pixels u of exp(-(d_u - d0)/tau) (each floored at
    e^-50), given that every one of them is farther than rho and the n_eval evaluated ones lie in the
    cells the disk of radius rho reaches (see lookup_sparse for the derivation)."""
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
        # max(r, rho) (which also holds every evaluated pixel) minus the evaluated ones
        f = _square_count(x, y, max(r, rho), geo, sat) - n_eval
        if f >= u:  # every remaining pixel is within this shell: the rest of the sum telescopes
            return t + u * e_prev + u * _LOGIT_FLOOR_WEIGHT
        e_next = e0 * _DECAY[i]
        t += f * (e_prev - e_next)
        e_prev = e_next
    return t + u * e_prev + u * _LOGIT_FLOOR_WEIGHT


@numba.njit(inline="always")
def _argmax(out, i):
    """First maximum of out[:, i], as numpy's argmax."""
    best = 0
    for u in range(1, out.shape[0]):
        if out[u, i] > out[best, i]:
            best = u
    return best


@_jit
def build_grid(kx, ky, vaug, geo, order, start, sat, kxs, kys, vf):
    """Bucket the pixels (kx, ky, V = vaug[:, :C]) into the grid geo: stable counting sort by cell
    (fills order, start, the summed-area table sat, and the sorted kxs, kys, vf; the padding entries
    are left as they are)."""
    m = kx.shape[0]
    c = vaug.shape[1] - 1
    cp = vf.shape[0] // kxs.shape[0]
    gx, gy = int(geo[4]), int(geo[5])
    inv_sx, inv_sy = 1.0 / geo[2], 1.0 / geo[3]
    cell = np.empty(m, np.int64)
    for t in range(gx * gy + 1):
        start[t] = 0
    for j in range(m):
        cj = _cell(np.float64(ky[j]), geo[1], inv_sy, gy) * gx + _cell(np.float64(kx[j]), geo[0], inv_sx, gx)
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
        for u in range(c):
            vf[p * cp + u] = vaug[j, u]
    for t in range(gx + 1):
        sat[0, t] = 0
    for r in range(gy):
        sat[r + 1, 0] = 0
        row = 0
        for t in range(gx):
            row += start[r * gx + t + 1] - start[r * gx + t]
            sat[r + 1, t + 1] = sat[r, t + 1] + row
    return 0


# --------------------------------------------------------------------------------------------------
# Soft mode.


@_jit
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


@_jit(fastmath=True)
def _weigh(db, k0, k1, d0, inv_tau, wb, vf, cp, jb, acc):
    """wb[k] = exp(-(db[k] - d0) / tau) for k in [k0, k1) (db holds padding lanes up to the next
    multiple of 32), acc[:cp] += sum of wb[k] * V[jb[k]] (8 channels at a time, 4 chains);
    returns the sum of the weights."""
    z = np.float32(0.0)
    for k in range((k1 - k0 + 31) & ~31):
        u = np.uint64(k0 + k)
        d = db[u]
        w = _exp_neg((d0 - d) * inv_tau)
        w = w if d < np.float32(1e3) else np.float32(0.0)
        wb[u] = w
        z += w
    # (unsigned indices: no negative-index wraparound code in the hot loop)
    ucp = np.uint64(cp)
    end = np.uint64(k1)
    for cb in range(0, cp, 8):
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


@_jit(nogil=True)
def soft(q0, q1, qx, qy, kx, ky, vf, cp, start, sat, geo, tau, tol, out, labels, stats):
    """Soft lookup of queries q0..q1-1 into out[:, q] (C, Nq) and labels[q] (argmax, first maximum);
    stats[0] += pixels evaluated.

    Per query: the nearest distance d0 (grow the disk until it holds a pixel closer than its radius),
    then weights exp(-(d - d0)/tau) over the evaluated pixels, growing the disk until the bound on
    the weight of the rest (_tail_bound) is <= tol * (their sum). The first radius is guessed from
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
            nr = _grow(x, y, rho, geo, start, rows, lo_c, hi_c, rng)
            n, dnew = _gather(kx, ky, rng, nr, jb, n, xf, yf, db)
            dmin = min(dmin, dnew)
            if dmin <= rho - DIST_MARGIN or n == m:
                break
            rho *= 2.0
        d0 = dmin
        for f in range(n, n + 32, 8):  # padding lanes after the last pixel (earlier rounds' are overwritten)
            v8_store(db, f, v8_splat(_FAR))
        for u in range(cp):
            acc[u] = 0.0
        z = _weigh(db, np.int64(0), n, d0, inv_tau, wb, vf, cp, jb, acc)
        while True:  # grow until the bound on the neglected weight is <= tol * z
            bound = _tail_bound(x, y, rho, n, m, np.float64(d0), tau, geo, sat)
            if bound <= tol * z:
                break
            rho += tau * (max(math.log(bound / (tol * z)), 0.0) + 0.3)
            nr = _grow(x, y, rho, geo, start, rows, lo_c, hi_c, rng)
            n1, _ = _gather(kx, ky, rng, nr, jb, n, xf, yf, db)
            if n1 > n:
                for f in range(n1, n1 + 32, 8):
                    v8_store(db, f, v8_splat(_FAR))
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
        labels[i] = _argmax(out, i)
    stats[0] += pairs
    return 0


# --------------------------------------------------------------------------------------------------
# Hard and top-k: exact float32 distances (no fastmath, the dense path's arithmetic), ties broken by
# the original pixel index, as dense.


@_jit
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


@_jit(nogil=True)
def nearest_k(q0, q1, qx, qy, kx, ky, vf, cp, order, start, geo, tau, k, out, labels, stats):
    """Top-k lookup (k = 1: hard, the nearest pixel's V) of queries q0..q1-1 into out[:, q] and
    labels[q].

    The disk grows until at least k pixels are closer than its radius (minus a rounding margin):
    then the k nearest pixels, and all pixels tied with the k-th, have been evaluated."""
    c = out.shape[0]
    m = kx.shape[0] - 8
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
            nr = _grow(x, y, rho, geo, start, rows, lo_c, hi_c, rng)
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
                out[u, i] = vf[best_p * cp + u]
            labels[i] = _argmax(out, i)
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
                base = jb[q] * cp
                for u in range(c):
                    acc[u] += w * vf[base + u]
        for u in range(c):
            out[u, i] = acc[u] / z
        labels[i] = _argmax(out, i)
        rho_prev = np.float64(kth) + 2.0 * DIST_MARGIN
    stats[0] += pairs
    return 0
