"""The sparse CPU lookup: per query, only the reference pixels whose softmax weight can matter.

Soft weights decay as exp(-d / tau), so at tau = 0.01 a reference pixel 0.15 farther than the
nearest one weighs exp(-15) ~ 3e-7 of it. The per-query loops are compiled with numba
(``runtime/lookup/kernels/``); where numba is missing, or where the cut would keep most pairs
anyway, the dense path runs instead (same result).

Reference pixels are bucketed into a grid of cells (row bands x narrow columns) over their
bounding box, sorted by cell; a summed-area table counts the pixels of any cell rectangle in O(1).
Each query grows a disk around itself, adding the cells the disk can reach (one contiguous slice of
pixels per row band), in compiled code (numba) over the queries on ``threads`` threads. In soft mode
two neighbouring queries whose coordinates are close share one disk around their bounding box (each
pixel loaded once for both, the ranges and growing paid once): everything below holds for each,
with "the disk" reaching every pixel closer than rho to any point of the box.

Soft mode, and its error bound. For a query q let d0 be the distance to its nearest reference
pixel (found exactly: the disk grows until it holds a pixel closer than its radius), and weigh
pixel j by w_j = exp(-(d_j - d0)/tau), the reference's softmax before normalisation (with the
same logit floor: w >= e^-50). Let A be the evaluated pixels (all cells the disk of radius rho
reaches, so every pixel closer than rho is in A), U the rest, Z_A and Z_U their weight sums.
The exact result is P = (Z_A P_A + Z_U P_U) / (Z_A + Z_U), hence

    |P_sparse - P| = eps |P_A - P_U| <= eps * max(V),  eps = Z_U / (Z_A + Z_U) <= Z_U / Z_A,

eps being the neglected probability mass. Z_U is bounded without looking at U: every u in U has
d_u >= rho. Take radii r_0 = rho - 1e-5 (a float32 rounding margin) < r_1 < ... < r_K, with
r_i = r_0 + (0.5, 1, 1.5, 2, 3, 4.5, 7, 10) tau, and e_i = exp(-(r_i - d0)/tau). If
F(r) = #{u in U : d_u < r}, grouping U by shells gives

    Z_U <= sum_{i=1..K} (F(r_i) - F(r_{i-1})) e_{i-1} + (|U| - F(r_K)) e_K
         = sum_{i=1..K} F(r_i) (e_{i-1} - e_i) + |U| e_K          (summation by parts, F(r_0) = 0)
         <= sum_{i=1..K} Fhat(r_i) (e_{i-1} - e_i) + |U| e_K + |U| e^-50 =: B,

since e_{i-1} > e_i: any upper bound Fhat >= F may replace F (the last term is the logit floor).
Fhat(r) = (pixels in the cells meeting the square of half-width max(r, rho) around q, or around
the pair's box, an O(1) summed-area-table count) - |A|: those cells hold A and every pixel within
r. (For a pair, B is the same sum for both but for the factor exp(d0 / tau) of all its terms but
the floor's, so it is computed once.) The query is done
when B <= tol * Z_A, so eps <= tol (default 1e-4) and |dP| <= tol * max(V), plus float32
rounding (the weights use a polynomial 2^x, relative error < 3e-7, relative to a distance within
11 tau of d0, so the logit floor sits at most a factor 2^16 from the reference's: < 1e-12 of the
sum; see kernels/soft.py). Otherwise rho grows by
tau (ln(B / (tol Z_A)) + 0.3) and the newly reached cells are added. Where the bound cannot be
met before the disk holds every pixel, U is empty and that query is computed exactly: the dense
computation, per query. On smooth 128x128 maps at tau = 0.01 this evaluates ~245 pixels per
query (~270 where pairs share a disk; of 16384; the ideal per-query cut, with the exact tail known, is ~170: the square counts
overestimate the shells) and the error seen is ~1e-5 of max(V).

hard / topk: the disk grows until at least k pixels (hard: 1) are closer than its radius (less a
1e-5 rounding margin), so the k nearest pixels and every pixel tied with the k-th are evaluated;
distances use the dense path's float32 arithmetic and ties go to the lowest pixel index, so the
result is the dense one (to float32 rounding of the weighted sum).

The dense numpy path is used instead (``info["path"] == "dense"``) when it is faster: soft mode
with a tau so large that the simple radius tau ln(M / tol) covers more than ``dense_above`` of
the reference area, topk with k > dense_above * M, or when numba is not installed (a warning
says so; the result is the same).
"""

from __future__ import annotations

import functools
import math
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from runtime.devices import cpu_threads
from runtime.errors import CoordGANError
from runtime.lookup import spec
from runtime.lookup.dense import dense_into
from runtime.lookup.inputs import Prepared, finish, flush_tiny, prepare

_NO_NUMBA = (
    "numba is not installed ({}), so runtime.lookup's sparse path runs the dense numpy one instead "
    "(same result, ~50x slower at 128 px); install coordgan-deploy[runtime] for the fast path."
)


@functools.lru_cache(maxsize=1)
def _kernels():
    """(the compiled kernels module, None), or (None, why not) where numba cannot be imported (warned once)."""
    try:
        from runtime.lookup import kernels
    except ImportError as exc:
        why = _NO_NUMBA.format(exc)
        warnings.warn(why, RuntimeWarning, stacklevel=3)
        return None, why
    return kernels, None


@dataclass
class _Grid:
    """One batch item's reference pixels bucketed into gx x gy cells over their bounding box, stored
    sorted by cell (row-major; the cells of one row band are one contiguous slice). See
    runtime/lookup/kernels/grid.py for the layout."""

    kx: np.ndarray
    ky: np.ndarray
    vt: np.ndarray
    order: np.ndarray
    start: np.ndarray
    sat: np.ndarray
    geo: np.ndarray


_warm_lock = threading.Lock()
_warmed: set[str] = set()


def warm_in_background(mode: str = "soft") -> None:
    """Load the compiled kernels of `mode` on a daemon thread, once per process: importing numba and
    reading its disk cache take 0.3-0.5 s (a first compile ~10 s), which the first lookup would
    otherwise wait for; `propagate` starts this before it opens the encoder, which then runs beside
    it. A lookup that comes first waits for the same load (numba's compile lock), no longer."""
    kind = "soft" if mode == "soft" else "nearest"
    with _warm_lock:
        if kind in _warmed:
            return
        _warmed.add(kind)
    threading.Thread(target=_warm, args=(mode,), name="coordgan-lookup-warm", daemon=True).start()


def _warm(mode: str) -> None:
    """A tiny lookup through the kernels (the real calls' argument types, so the same compiled code)."""
    g = np.stack(np.meshgrid(np.linspace(-1, 1, 8), np.linspace(-1, 1, 8))).astype(np.float32)
    try:
        lookup_sparse(g[None, :, :4, :4], g[None, None], np.ones((1, 1, 1, 8, 8), np.float32),
                      mode=mode, k=1 if mode == "topk" else None, threads=1, dense_above=1.0)
    except Exception:  # never fails a run: a real lookup reports whatever went wrong
        pass


_pool_lock = threading.Lock()
_pool: tuple[int, ThreadPoolExecutor] | None = None


def _thread_pool(threads: int) -> ThreadPoolExecutor:
    """A process-wide pool with `threads` workers (kept between calls; replaced when the count changes)."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != threads:
            if _pool is not None:
                _pool[1].shutdown(wait=False)
            _pool = (threads, ThreadPoolExecutor(max_workers=threads, thread_name_prefix="coordgan-lookup"))
        return _pool[1]


def _in_chunks(run, nq: int, threads: int) -> np.ndarray:
    """run(q0, q1, stats) over the queries on `threads` threads (the kernels release the GIL), a few
    chunks per thread so that a thread slowed by other load does not hold up the rest; the kernels'
    two counts (stats[0], stats[1]) summed over the chunks."""
    chunks = 1 if threads == 1 else int(np.clip(nq // 256, 1, 4 * threads))
    bounds = np.linspace(0, nq, chunks + 1).astype(np.int64)
    stats = np.zeros((chunks, 2), np.int64)
    jobs = [(int(bounds[t]), int(bounds[t + 1]), stats[t]) for t in range(chunks)]
    if chunks == 1:
        run(*jobs[0])
    else:
        list(_thread_pool(threads).map(lambda job: run(*job), jobs))
    return stats.sum(axis=0)


def _grid(kern, x: Prepared, i: int, threads: int) -> _Grid:
    """Batch item i's reference pixels sorted by cell, their probabilities gathered on `threads` threads."""
    kx, ky, tau = x.kx[i], x.ky[i], x.tau
    m, c = x.m, x.c
    x0, y0 = float(kx.min()), float(ky.min())
    wx, wy = max(float(kx.max()) - x0, 1e-6), max(float(ky.max()) - y0, 1e-6)
    # Row bands a quarter of a typical query radius high (half the pixel spacing + 12 tau): ~8 bands
    # per query. Columns are cheap (a band's cells are one slice), so they are narrow.
    spacing = math.sqrt(wx * wy / m)
    band = (spacing / 2 + 12 * tau) / 4
    gy = int(np.clip(math.ceil(wy / band), 1, 1024))
    gx = int(np.clip(math.ceil(wx / min(band / 8, spacing / 4)), 1, max(1, (1 << 20) // gy)))
    geo = np.array([x0, y0, wx / gx * (1 + 1e-6), wy / gy * (1 + 1e-6), gx, gy], np.float64)
    c8 = -(-c // 8) * 8  # channels padded to whole blocks of 8
    pad = kern.PAD  # far-away entries after the pixels: the kernels read whole vectors
    g = _Grid(
        kx=np.full(m + pad, kern.FAR, np.float32),
        ky=np.full(m + pad, kern.FAR, np.float32),
        vt=np.zeros(c8 * (m + pad), np.float32),
        order=np.empty(m, np.int64),
        start=np.empty(gx * gy + 1, np.int64),
        sat=np.empty((gy + 1, gx + 1), np.int64),
        geo=geo,
    )
    kern.sort_grid(kx, ky, geo, g.order, g.start, g.sat, g.kx, g.ky)
    vpm = np.ascontiguousarray(x.v[i].transpose(0, 2, 1)).reshape(m, c)  # pixel-major rows
    _in_chunks(lambda p0, p1, stats: kern.gather_channels(vpm, g.order, p0, p1, g.vt), m, threads)
    return g


def _sparse_item(kern, x: Prepared, i: int, tol: float, threads: int, out: np.ndarray,
                 labels: np.ndarray) -> np.ndarray:
    """Batch item i through its mode's kernel; (pairs evaluated, queries that shared a disk)."""
    g = _grid(kern, x, i, threads)
    qx, qy = x.qx[i], x.qy[i]
    if x.mode == "soft":
        ks = math.log2(math.e) / x.tau  # the kernel's distances in log2 units: a weight is one 2^x
        kxs, kys = g.kx * np.float32(ks), g.ky * np.float32(ks)

        def run(q0, q1, stats):
            kern.soft(q0, q1, qx, qy, ks, kxs, kys, g.vt, g.start, g.sat, g.geo, x.tau, tol, out, labels, stats)
    else:
        k = 1 if x.mode == "hard" else x.k

        def run(q0, q1, stats):
            kern.nearest_k(q0, q1, qx, qy, g.kx, g.ky, g.vt, g.order, g.start, g.geo, x.tau, k, out, labels, stats)
    return _in_chunks(run, qx.shape[0], threads)


# Above this many channels (classes + the normaliser) BLAS sums the weighted probabilities faster than
# the compiled kernel's per-channel loops (measured on 2 cores: the two cross near 32 channels).
_BLAS_CHANNELS = 32
_BLAS_ROWS, _BLAS_TILES = 128, 4  # queries x (tiles of reference pixels) per matrix product


def _dense_item(kern, x: Prepared, i: int, threads: int, out: np.ndarray, labels: np.ndarray) -> None:
    """Soft mode over every reference pixel, compiled (kernels/dense.py)."""
    m, c, tile = x.m, x.c, kern.TILE
    span = tile * (_BLAS_TILES if c + 1 > _BLAS_CHANNELS else 1)
    mp = -(-m // span) * span
    kx = np.full(mp, 1e4, np.float32)  # far-away padding whose label probabilities, ones row included, are 0
    ky = np.full(mp, 1e4, np.float32)
    kx[:m], ky[:m] = x.kx[i], x.ky[i]
    qx, qy = x.qx[i], x.qy[i]
    if c + 1 <= _BLAS_CHANNELS:  # on `threads` threads
        vt = np.zeros((c + 1, mp), np.float32)
        vt[:, :m] = x.vaug[i].T

        def run(q0, q1, stats):
            kern.soft_dense(q0, q1, qx, qy, kx, ky, vt, x.tau, out, labels)

        _in_chunks(run, qx.shape[0], threads)
        return
    vp = np.zeros((mp, c + 1), np.float32)  # pixel-major for the product (BLAS threads its own way)
    vp[:m] = x.vaug[i]
    w = np.empty((_BLAS_ROWS, span), np.float32)
    d0 = np.empty(_BLAS_ROWS, np.float32)
    acc = np.empty((_BLAS_ROWS, c + 1), np.float32)
    part = np.empty_like(acc)
    for q0 in range(0, qx.shape[0], _BLAS_ROWS):
        rows = slice(0, min(_BLAS_ROWS, qx.shape[0] - q0))
        qs = slice(q0, q0 + rows.stop)
        kern.nearest_rows(qx[qs], qy[qs], kx, ky, d0[rows])
        acc[rows] = 0.0
        for j0 in range(0, mp, span):
            kern.weight_rows(qx[qs], qy[qs], d0[rows], kx, ky, j0, span // tile, x.tau, w[rows])
            np.dot(w[rows], vp[j0:j0 + span], out=part[rows])
            acc[rows] += part[rows]
        out[:, qs] = (acc[rows, :c] / acc[rows, c:]).T
        labels[qs] = out[:, qs].argmax(axis=0)


def _dense_reason(x: Prepared, tol: float, dense_above: float) -> str | None:
    """Why the dense path is the better one for these inputs (None: use the sparse one)."""
    if x.mode == "topk" and x.k > dense_above * x.m:
        return f"k = {x.k} is more than {dense_above:.0%} of the reference pixels"
    if x.mode == "soft":
        # Radius at which the simple bound (M pixels, each <= exp(-(r - d0)/tau)) is met: if its disk
        # covers more than `dense_above` of the reference area, the kernel would evaluate about that
        # share of all pairs, and the dense path's GEMM does that faster.
        r = x.tau * math.log(x.m / tol)
        area = (np.ptp(x.kx, axis=1).astype(np.float64) * np.ptp(x.ky, axis=1)).max()
        if min(1.0, math.pi * r * r / max(float(area), 1e-12)) > dense_above:
            return f"tau = {x.tau:g} is large for the map: most reference pixels carry weight"
    return None


def lookup_sparse(
    query,
    ref_maps,
    ref_probs,
    tau: float = 0.01,
    mode: str = "soft",
    k: int | None = None,
    *,
    tol: float = 1e-4,
    threads: int | None = None,
    dense_above: float = 0.25,
    info: dict | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Lookup that evaluates, per query, only the reference pixels whose weight can matter.

    The bound, the cut and when the dense path runs instead: the module docstring.

    Args:
        tau, mode, k: as in runtime.lookup.spec.
        tol: bound on the neglected softmax mass per query (soft mode), 0 < tol < 1.
        threads: CPU threads (default: runtime.devices.cpu_threads, the CPUs available to the process
            capped by OMP_NUM_THREADS).
        dense_above: share of the pairs above which the dense path is used, see above.
        info: optional dict, filled with ``path`` ("sparse" or "dense"), ``pairs`` (pairs
            evaluated), ``dense_pairs`` (N * Hq*Wq * M), ``shared`` (soft mode: queries that shared
            a disk with a neighbour), ``threads`` and ``reason`` (why the dense path ran; None on the
            sparse one).

    Returns:
        P (N, C, Hq, Wq) float32 and labels (N, Hq, Wq) int32.
    """
    x = prepare(query, ref_maps, ref_probs, tau=tau, mode=mode, k=k)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 < tol < 1:
        raise CoordGANError(f"tol must be a number strictly between 0 and 1, got {tol!r}.")
    if isinstance(dense_above, bool) or not isinstance(dense_above, (int, float)) or not 0 <= dense_above <= 1:
        raise CoordGANError(f"dense_above must be a number between 0 and 1, got {dense_above!r}.")
    if threads is None:
        threads = cpu_threads()
    elif spec.as_int(threads) is None or threads < 1:
        raise CoordGANError(f"threads must be a positive integer, got {threads!r}.")
    n, m, nq = x.n, x.m, x.hq * x.wq
    stats = {"path": "sparse", "pairs": 0, "dense_pairs": n * nq * m, "shared": 0, "threads": int(threads),
             "reason": None}
    kern, why = _kernels()
    reason = why if kern is None else _dense_reason(x, float(tol), float(dense_above))
    out = np.empty((n, x.c, nq), np.float32)
    if reason is None:
        labels = np.empty((n, nq), np.int32)  # the kernels write the argmax too
        for i in range(n):
            pairs, shared = _sparse_item(kern, x, i, float(tol), int(threads), out[i], labels[i])
            stats["pairs"] += int(pairs)
            stats["shared"] += int(shared)
        if x.mode != "soft":  # (the soft kernel flushes as it writes)
            flush_tiny(out)
        result = out.reshape(n, x.c, x.hq, x.wq), labels.reshape(n, x.hq, x.wq)
    elif kern is not None and x.mode == "soft":  # every pair, compiled
        stats.update(path="dense", pairs=stats["dense_pairs"], reason=reason)
        labels = np.empty((n, nq), np.int32)
        for i in range(n):
            _dense_item(kern, x, i, int(threads), out[i], labels[i])
        flush_tiny(out)
        result = out.reshape(n, x.c, x.hq, x.wq), labels.reshape(n, x.hq, x.wq)
    else:  # numpy: hard / topk (exact ties), or no numba
        stats.update(path="dense", pairs=stats["dense_pairs"], reason=reason)
        dense_into(x, out)
        result = finish(out, x.hq, x.wq)
    if info is not None:
        info.update(stats)
    return result
