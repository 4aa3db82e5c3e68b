"""Correspondence lookup on the CPU with numpy: an exact dense path and a radius-bounded sparse one.

Semantics are those of the torch reference ``coordgan.correspondence.lookup`` (read its docstring):
Q (N, 2, Hq, Wq), K (N, R, 2, Hk, Wk), V (N, R, C, Hk, Wk) -> P (N, C, Hq, Wq) float32 and
labels (N, Hq, Wq) int32, reference pixels flattened as j = (r, y, x), distances
``sqrt(dx*dx + dy*dy)`` from direct float32 differences, soft / hard / topk modes.

* :func:`lookup_dense` evaluates every (query, reference) pair, chunked over queries so the working
  set stays inside a memory budget. It matches the reference to ~1e-6.
* :func:`lookup_sparse` evaluates, per query, only the reference pixels that can carry weight.
  Soft weights decay as exp(-d / tau), so at tau = 0.01 a reference pixel 0.15 farther than the
  nearest one weighs exp(-15) ~ 3e-7 of it. Its loops are compiled with numba
  (``runtime/lookup/_sparse_kernels.py``); without numba it runs the dense path (same result).

numpy (and numba for the sparse path); never torch.
"""

from __future__ import annotations

import math
import operator
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from runtime.errors import CoordGANError

__all__ = ["MODES", "COORD_LIMIT", "default_threads", "lookup_dense", "lookup_sparse", "prepare"]

MODES = ("soft", "hard", "topk")

# Correspondence maps come out of tanh; the reference allows this slack for float16 rounding.
COORD_LIMIT = 1.0 + 1e-3

# Logits below -50 are clamped: exp(-50) ~ 2e-22, so the change is < M * 2e-22 relative, but
# without it exp() returns subnormals and both exp and the GEMM that follows slow down 5-20x.
_LOGIT_FLOOR = -50.0

# Dense chunking: one query row costs ~3 float32 buffers of M entries (distances, dy, topk scratch).
_DEFAULT_BUDGET = 256 << 20
# Below the budget, small chunks are faster (the buffers stay in cache): ~2 MiB per buffer.
_CACHE_BYTES = 2 << 20


# --------------------------------------------------------------------------------------------------
# Validation and layout: one CoordGANError sentence per mistake, same rules as the reference.


@dataclass
class Prepared:
    """Validated inputs in the layout the numpy paths use (all float32, C-contiguous)."""

    qx: np.ndarray  # (N, Hq*Wq)
    qy: np.ndarray  # (N, Hq*Wq)
    kx: np.ndarray  # (N, M), j = (r, y, x)
    ky: np.ndarray  # (N, M)
    vaug: np.ndarray  # (N, M, C + 1): V with a column of ones, so one GEMM gives sum(w V) and sum(w)
    hq: int
    wq: int
    tau: float
    mode: str
    k: int | None

    @property
    def n(self) -> int:
        return self.qx.shape[0]

    @property
    def m(self) -> int:
        return self.kx.shape[1]

    @property
    def c(self) -> int:
        return self.vaug.shape[2] - 1


def _shape(a: np.ndarray) -> str:
    return "(" + ", ".join(str(s) for s in a.shape) + ")"


def _as_array(name: str, value: object, layout: str, rank: int) -> np.ndarray:
    try:
        a = np.asarray(value)
    except Exception as exc:  # ragged lists and the like
        raise CoordGANError(f"{name} must be an array of shape {layout}, got {type(value).__name__}.") from exc
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise CoordGANError(f"{name} must be a numeric array of shape {layout}, got dtype {a.dtype}.")
    if np.iscomplexobj(a):
        raise CoordGANError(f"{name} must be a real array, got {a.dtype}.")
    if a.ndim != rank:
        raise CoordGANError(f"{name} must have shape {layout}, got {_shape(a)}.")
    if a.size == 0:
        raise CoordGANError(f"{name} has an empty dimension (shape {_shape(a)}); every size must be at least 1.")
    return a


def _check_coords(name: str, a: np.ndarray) -> np.ndarray:
    if not np.issubdtype(a.dtype, np.floating):
        raise CoordGANError(f"{name} must be a floating-point array of coordinates, got {a.dtype}.")
    a = a.astype(np.float32, copy=False)
    if not np.isfinite(a).all():
        raise CoordGANError(f"{name} contains NaN or Inf.")
    peak = float(np.abs(a).max())
    if peak > COORD_LIMIT:
        raise CoordGANError(
            f"{name} has coordinates outside [-1, 1] (largest magnitude {peak:.4g}), so it is not a "
            "correspondence map (those come from tanh)."
        )
    return a


def _check_probs(name: str, a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float32, copy=False)  # bool / integer one-hot masks are welcome too
    if not np.isfinite(a).all():
        raise CoordGANError(f"{name} contains NaN or Inf.")
    low = float(a.min())
    if low < 0:
        raise CoordGANError(f"{name} contains negative values (min {low:.4g}); label probabilities must be >= 0.")
    return a


def as_int(value: object) -> int | None:
    """value as an int (Python or numpy integer), or None for anything else, bool included."""
    if isinstance(value, (bool, np.bool_)):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def check_tau(tau: object) -> float:
    if isinstance(tau, (bool, np.bool_)) or not isinstance(tau, (int, float, np.integer, np.floating)):
        raise CoordGANError(f"tau must be a finite number > 0, got {tau!r}.")
    if not math.isfinite(float(tau)) or float(tau) <= 0:
        raise CoordGANError(f"tau must be a finite number > 0, got {tau!r}.")
    return float(tau)


def check_mode(mode: object, k: object, m: int) -> int | None:
    """Validate mode and k against M = R*Hk*Wk; return k as an int (topk) or None."""
    if mode not in MODES:
        raise CoordGANError(f"mode must be one of 'soft', 'hard' or 'topk', got {mode!r}.")
    if mode == "topk":
        if k is None:
            raise CoordGANError("mode='topk' needs k, the number of nearest reference pixels to keep.")
        k_int = as_int(k)
        if k_int is None or not 1 <= k_int <= m:
            raise CoordGANError(f"k must be an integer between 1 and R*Hk*Wk = {m}, got {k!r}.")
        return k_int
    if k is not None:
        raise CoordGANError(f"k is only used with mode='topk', but it was given ({k!r}) with mode={mode!r}.")
    return None


def check_shapes(q_shape: tuple, k_shape: tuple, v_shape: tuple) -> None:
    """Shape rules shared by every path (the CUDA launcher checks raw-pointer shapes with it too)."""
    if len(q_shape) != 4 or q_shape[1] != 2:
        raise CoordGANError(f"query must have shape (N, 2, Hq, Wq) with 2 coordinate channels, got {tuple(q_shape)}.")
    n = q_shape[0]
    expected_k = (n, k_shape[1], 2, k_shape[3], k_shape[4])
    if tuple(k_shape) != expected_k:
        raise CoordGANError(
            f"ref_maps must have shape (N, R, 2, Hk, Wk) = {expected_k} to match query, got {tuple(k_shape)}."
        )
    expected_v = (n, k_shape[1], v_shape[2], k_shape[3], k_shape[4])
    if tuple(v_shape) != expected_v:
        raise CoordGANError(
            f"ref_probs must have shape (N, R, C, Hk, Wk) = {expected_v} to match ref_maps, got {tuple(v_shape)}."
        )


def prepare(query: object, ref_maps: object, ref_probs: object, *, tau: object, mode: object, k: object) -> Prepared:
    """Validate like the reference and lay the inputs out for the numpy paths."""
    if mode not in MODES:
        raise CoordGANError(f"mode must be one of 'soft', 'hard' or 'topk', got {mode!r}.")
    tau = check_tau(tau)
    q = _as_array("query", query, "(N, 2, Hq, Wq)", 4)
    kmap = _as_array("ref_maps", ref_maps, "(N, R, 2, Hk, Wk)", 5)
    v = _as_array("ref_probs", ref_probs, "(N, R, C, Hk, Wk)", 5)
    check_shapes(q.shape, kmap.shape, v.shape)
    q = _check_coords("query", q)
    kmap = _check_coords("ref_maps", kmap)
    v = _check_probs("ref_probs", v)
    n, r, c, hk, wk = v.shape
    m = r * hk * wk
    k_int = check_mode(mode, k, m)
    hq, wq = q.shape[2], q.shape[3]
    vaug = np.empty((n, m, c + 1), np.float32)
    vaug[..., :c] = v.transpose(0, 1, 3, 4, 2).reshape(n, m, c)
    vaug[..., c] = 1.0
    return Prepared(
        qx=np.ascontiguousarray(q[:, 0].reshape(n, hq * wq)),
        qy=np.ascontiguousarray(q[:, 1].reshape(n, hq * wq)),
        kx=np.ascontiguousarray(kmap[:, :, 0].reshape(n, m)),
        ky=np.ascontiguousarray(kmap[:, :, 1].reshape(n, m)),
        vaug=vaug,
        hq=hq,
        wq=wq,
        tau=tau,
        mode=mode,
        k=k_int,
    )


def _finish(p: np.ndarray, hq: int, wq: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, C, HqWq) -> P (N, C, Hq, Wq) and labels (N, Hq, Wq) int32 (first maximum on ties)."""
    n, c, _ = p.shape
    labels = p.argmax(axis=1).astype(np.int32).reshape(n, hq, wq)
    return p.reshape(n, c, hq, wq), labels


# --------------------------------------------------------------------------------------------------
# The block kernel of the dense path: B queries against L reference pixels.


class _Workspace:
    """Scratch buffers reused across blocks (a fresh (B, L) allocation per block costs page faults)."""

    def __init__(self) -> None:
        self._bufs: list[np.ndarray] = []

    def get(self, i: int, b: int, l: int, dtype=np.float32) -> np.ndarray:
        while len(self._bufs) <= i:
            self._bufs.append(np.empty(0, np.uint8))
        need = b * l * np.dtype(dtype).itemsize
        if self._bufs[i].nbytes < need:
            self._bufs[i] = np.empty(max(need, 2 * self._bufs[i].nbytes), np.uint8)
        return self._bufs[i][:need].view(dtype).reshape(b, l)


def _distances(qx, qy, kx, ky, ws: _Workspace) -> np.ndarray:
    """(B, L) float32 sqrt(dx*dx + dy*dy), the reference's formula (direct differences, not the
    |q|^2 + |k|^2 - 2 q.k expansion, whose cancellation error near d = 0 is amplified 1/tau times)."""
    d = ws.get(0, qx.shape[0], kx.shape[0])
    t = ws.get(1, qx.shape[0], kx.shape[0])
    np.subtract(qx[:, None], kx[None, :], out=d)
    np.multiply(d, d, out=d)
    np.subtract(qy[:, None], ky[None, :], out=t)
    np.multiply(t, t, out=t)
    np.add(d, t, out=d)
    return np.sqrt(d, out=d)


def _topk_mask(d: np.ndarray, k: int) -> np.ndarray:
    """The k nearest columns of each row, ties at the k-th distance broken by lower column index
    (columns must be in increasing j order)."""
    kth = np.partition(d, k - 1, axis=1)[:, k - 1 : k]
    closer = d < kth
    at_kth = d == kth
    keep = closer | at_kth
    n_closer = closer.sum(axis=1)
    over = np.nonzero(n_closer + at_kth.sum(axis=1) > k)[0]
    if over.size:  # more pixels tie at the k-th distance than there is room for: lowest j first
        rank = np.cumsum(at_kth[over], axis=1)
        room = (k - n_closer[over])[:, None]
        keep[over] = closer[over] | (at_kth[over] & (rank <= room))
    return keep


def _block(qx, qy, kx, ky, vaug, tau: float, mode: str, k: int | None, ws: _Workspace) -> np.ndarray:
    """P for B queries against L reference pixels: (C, B) float32.

    hard/topk break ties by column index, so their columns must be in increasing j order.
    """
    d = _distances(qx, qy, kx, ky, ws)
    c = vaug.shape[1] - 1
    if mode == "hard":
        nearest = d.argmin(axis=1)  # first minimum = lowest j
        return vaug[nearest, :c].T
    keep = _topk_mask(d, k) if mode == "topk" else None
    # softmax(-d/tau) with the max logit subtracted: w = exp((d - d_min) / -tau), as the reference.
    dmin = d.min(axis=1, keepdims=True)
    np.subtract(d, dmin, out=d)
    np.divide(d, -tau, out=d)
    np.maximum(d, _LOGIT_FLOOR, out=d)
    w = np.exp(d, out=d)
    if keep is not None:
        np.multiply(w, keep, out=w)
    s = w @ vaug  # (B, C + 1): the last column is sum_j w
    return (s[:, :c] / s[:, c:]).T


# --------------------------------------------------------------------------------------------------
# Dense.


def _dense_chunk(m: int, mode: str, memory_budget: int) -> int:
    per_row = 4 * m * (4 if mode == "topk" else 2)
    cache_rows = max(8, _CACHE_BYTES // (4 * m))
    return max(1, min(cache_rows, memory_budget // per_row))


def _dense_item(x: Prepared, i: int, out: np.ndarray, chunk: int, ws: _Workspace, queries=None) -> None:
    qx, qy = x.qx[i], x.qy[i]
    idx = np.arange(qx.shape[0]) if queries is None else queries
    for s in range(0, idx.shape[0], chunk):
        sel = idx[s : s + chunk]
        out[i][:, sel] = _block(qx[sel], qy[sel], x.kx[i], x.ky[i], x.vaug[i], x.tau, x.mode, x.k, ws)


def lookup_dense(
    query,
    ref_maps,
    ref_probs,
    tau: float = 0.01,
    mode: str = "soft",
    k: int | None = None,
    chunk: int | None = None,
    memory_budget: int = _DEFAULT_BUDGET,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact lookup over every reference pixel, numpy float32, same result as the reference.

    Args:
        query, ref_maps, ref_probs: Q (N, 2, Hq, Wq), K (N, R, 2, Hk, Wk), V (N, R, C, Hk, Wk)
            arrays (coordinates float16/32/64; V any real dtype, >= 0).
        tau, mode, k: as in ``coordgan.correspondence.lookup``.
        chunk: query pixels per step; default: what keeps the scratch buffers near cache size,
            capped by ``memory_budget``.
        memory_budget: bytes of scratch per step (each query row holds 2-4 float32 rows of M).

    Returns:
        P (N, C, Hq, Wq) float32 and labels (N, Hq, Wq) int32.
    """
    x = prepare(query, ref_maps, ref_probs, tau=tau, mode=mode, k=k)
    if chunk is None:
        chunk = _dense_chunk(x.m, x.mode, memory_budget)
    elif as_int(chunk) is None or chunk < 1:
        raise CoordGANError(f"chunk must be a positive integer, got {chunk!r}.")
    out = np.empty((x.n, x.c, x.hq * x.wq), np.float32)
    ws = _Workspace()
    for i in range(x.n):
        _dense_item(x, i, out, int(chunk), ws)
    return _finish(out, x.hq, x.wq)


# --------------------------------------------------------------------------------------------------
# Sparse: per-query cut, compiled with numba (runtime/lookup/_sparse_kernels.py).

_kernels_module = None
_NO_NUMBA = (
    "numba is not installed ({}), so runtime.lookup's sparse path runs the dense numpy one instead "
    "(same result, ~50x slower at 128 px); install coordgan-deploy[runtime] for the fast path."
)


def _sparse_kernels():
    """The compiled kernels module, or None when numba cannot be imported (warned once)."""
    global _kernels_module
    if _kernels_module is None:
        try:
            from runtime.lookup import _sparse_kernels
        except ImportError as exc:
            _kernels_module = _NO_NUMBA.format(exc)
            warnings.warn(_kernels_module, RuntimeWarning, stacklevel=3)
        else:
            _kernels_module = _sparse_kernels
    return None if isinstance(_kernels_module, str) else _kernels_module


def default_threads() -> int:
    """CPU threads the sparse path uses unless told: the CPUs this process may run on, capped by
    OMP_NUM_THREADS when that is set (the variable that also caps BLAS and ONNX Runtime threads)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:
        n = min(n, int(omp))
    return max(1, n)


@dataclass
class _Grid:
    """One batch item's reference pixels bucketed into gx x gy cells over their bounding box, stored
    sorted by cell (row-major; the cells of one row band are one contiguous slice). See
    runtime/lookup/_sparse_kernels.py for the layout."""

    kx: np.ndarray
    ky: np.ndarray
    vf: np.ndarray
    cp: int
    order: np.ndarray
    start: np.ndarray
    sat: np.ndarray
    geo: np.ndarray


def _grid(kern, kx: np.ndarray, ky: np.ndarray, vaug: np.ndarray, tau: float) -> _Grid:
    m, c = vaug.shape[0], vaug.shape[1] - 1
    x0, y0 = float(kx.min()), float(ky.min())
    wx, wy = max(float(kx.max()) - x0, 1e-6), max(float(ky.max()) - y0, 1e-6)
    # Row bands a quarter of a typical query radius high (half the pixel spacing + 12 tau): ~8 bands
    # per query. Columns are cheap (a band's cells are one slice), so they are narrow.
    spacing = math.sqrt(wx * wy / m)
    band = (spacing / 2 + 12 * tau) / 4
    gy = int(np.clip(math.ceil(wy / band), 1, 1024))
    gx = int(np.clip(math.ceil(wx / min(band / 8, spacing / 4)), 1, max(1, (1 << 20) // gy)))
    geo = np.array([x0, y0, wx / gx * (1 + 1e-6), wy / gy * (1 + 1e-6), gx, gy], np.float64)
    cp = -(-c // 8) * 8  # channels padded to whole 8-lane vectors
    g = _Grid(
        kx=np.full(m + 8, 1e4, np.float32),  # + 8 far-away entries: the kernels read whole 8-lane vectors
        ky=np.full(m + 8, 1e4, np.float32),
        vf=np.zeros((m + 8) * cp, np.float32),
        cp=cp,
        order=np.empty(m, np.int64),
        start=np.empty(gx * gy + 1, np.int64),
        sat=np.empty((gy + 1, gx + 1), np.int64),
        geo=geo,
    )
    kern.build_grid(kx, ky, vaug, geo, g.order, g.start, g.sat, g.kx, g.ky, g.vf)
    return g


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


def _in_chunks(run, nq: int, threads: int) -> int:
    """run(q0, q1, stats) over the queries on `threads` threads (the kernels release the GIL), a few
    chunks per thread so that a thread slowed by other load does not hold up the rest."""
    chunks = 1 if threads == 1 else int(np.clip(nq // 256, 1, 4 * threads))
    bounds = np.linspace(0, nq, chunks + 1).astype(np.int64)
    stats = np.zeros((chunks, 1), np.int64)
    jobs = [(int(bounds[t]), int(bounds[t + 1]), stats[t]) for t in range(chunks)]
    if chunks == 1:
        run(*jobs[0])
    else:
        list(_thread_pool(threads).map(lambda job: run(*job), jobs))
    return int(stats.sum())


def _sparse_item(kern, x: Prepared, i: int, tol: float, threads: int, out: np.ndarray, labels: np.ndarray) -> int:
    g = _grid(kern, x.kx[i], x.ky[i], x.vaug[i], x.tau)
    qx, qy = x.qx[i], x.qy[i]
    if x.mode == "soft":
        def run(q0, q1, stats):
            kern.soft(q0, q1, qx, qy, g.kx, g.ky, g.vf, g.cp, g.start, g.sat, g.geo, x.tau, tol, out, labels, stats)
    else:
        k = 1 if x.mode == "hard" else x.k
        def run(q0, q1, stats):
            kern.nearest_k(q0, q1, qx, qy, g.kx, g.ky, g.vf, g.cp, g.order, g.start, g.geo, x.tau, k, out, labels,
                           stats)
    return _in_chunks(run, qx.shape[0], threads)


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

    Reference pixels are bucketed into a grid of cells (row bands x narrow columns) over their
    bounding box, sorted by cell; a summed-area table counts the pixels of any cell rectangle in O(1).
    Each query grows a disk around itself, adding the cells the disk can reach (one contiguous slice of
    pixels per row band), in compiled code (numba) over the queries on ``threads`` threads.

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
    Fhat(r) = (pixels in the cells meeting the square of half-width max(r, rho) around q, an O(1)
    summed-area-table count) - |A|: those cells hold A and every pixel within r. The query is done
    when B <= tol * Z_A, so eps <= tol (default 1e-4) and |dP| <= tol * max(V), plus float32
    rounding (the weights use a polynomial exp, relative error < 3e-6). Otherwise rho grows by
    tau (ln(B / (tol Z_A)) + 0.3) and the newly reached cells are added. Where the bound cannot be
    met before the disk holds every pixel, U is empty and that query is computed exactly: the dense
    computation, per query. On smooth 128x128 maps at tau = 0.01 this evaluates ~245 pixels per
    query (of 16384; the ideal per-query cut, with the exact tail known, is ~170: the square counts
    overestimate the shells) and the error seen is ~1e-5 of max(V).

    hard / topk: the disk grows until at least k pixels (hard: 1) are closer than its radius (less a
    1e-5 rounding margin), so the k nearest pixels and every pixel tied with the k-th are evaluated;
    distances use the dense path's float32 arithmetic and ties go to the lowest pixel index, so the
    result is the dense one (to float32 rounding of the weighted sum).

    The dense numpy path is used instead (``info["path"] == "dense"``) when it is faster: soft mode
    with a tau so large that the simple radius tau ln(M / tol) covers more than ``dense_above`` of
    the reference area, topk with k > dense_above * M, or when numba is not installed (a warning
    says so; the result is the same).

    Args:
        tau, mode, k: as in ``coordgan.correspondence.lookup``.
        tol: bound on the neglected softmax mass per query (soft mode), 0 < tol < 1.
        threads: CPU threads (default: :func:`default_threads`, the CPUs available to the process
            capped by OMP_NUM_THREADS).
        dense_above: share of the pairs above which the dense path is used, see above.
        info: optional dict, filled with ``path`` ("sparse" or "dense"), ``pairs`` (pairs
            evaluated), ``dense_pairs`` (N * Hq*Wq * M), ``threads`` and ``reason`` (why the dense
            path ran; None on the sparse one).

    Returns:
        P (N, C, Hq, Wq) float32 and labels (N, Hq, Wq) int32.
    """
    x = prepare(query, ref_maps, ref_probs, tau=tau, mode=mode, k=k)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 < tol < 1:
        raise CoordGANError(f"tol must be a number strictly between 0 and 1, got {tol!r}.")
    if isinstance(dense_above, bool) or not isinstance(dense_above, (int, float)) or not 0 <= dense_above <= 1:
        raise CoordGANError(f"dense_above must be a number between 0 and 1, got {dense_above!r}.")
    if threads is None:
        threads = default_threads()
    elif as_int(threads) is None or threads < 1:
        raise CoordGANError(f"threads must be a positive integer, got {threads!r}.")
    n, m, nq = x.n, x.m, x.hq * x.wq
    stats = {"path": "sparse", "pairs": 0, "dense_pairs": n * nq * m, "threads": int(threads), "reason": None}
    kern = _sparse_kernels()
    reason = _kernels_module if kern is None else _dense_reason(x, float(tol), float(dense_above))
    out = np.empty((n, x.c, nq), np.float32)
    if reason is None:
        labels = np.empty((n, nq), np.int32)  # the kernels write the argmax too
        for i in range(n):
            stats["pairs"] += _sparse_item(kern, x, i, float(tol), int(threads), out[i], labels[i])
        result = out.reshape(n, x.c, x.hq, x.wq), labels.reshape(n, x.hq, x.wq)
    else:
        stats.update(path="dense", pairs=stats["dense_pairs"], reason=reason)
        ws = _Workspace()
        for i in range(n):
            _dense_item(x, i, out, _dense_chunk(m, x.mode, _DEFAULT_BUDGET), ws)
        result = _finish(out, x.hq, x.wq)
    if info is not None:
        info.update(stats)
    return result
