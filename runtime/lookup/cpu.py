"""Correspondence lookup on the CPU with numpy: an exact dense path and a radius-bounded sparse one.

Semantics are those of the torch reference ``coordgan.correspondence.lookup`` (read its docstring):
Q (N, 2, Hq, Wq), K (N, R, 2, Hk, Wk), V (N, R, C, Hk, Wk) -> P (N, C, Hq, Wq) float32 and
labels (N, Hq, Wq) int32, reference pixels flattened as j = (r, y, x), distances
``sqrt(dx*dx + dy*dy)`` from direct float32 differences, soft / hard / topk modes.

* :func:`lookup_dense` evaluates every (query, reference) pair, chunked over queries so the working
  set stays inside a memory budget. It matches the reference to ~1e-6.
* :func:`lookup_sparse` evaluates only the reference pixels that can carry weight. Soft weights
  decay as exp(-d / tau), so at tau = 0.01 a reference pixel 0.15 farther than the nearest one
  weighs exp(-15) ~ 3e-7 of it. Queries are grouped into spatial tiles, reference pixels into grid
  cells, and each tile sees only the cells whose weight it cannot provably ignore (bound below).

Numpy only (scipy's cKDTree, when installed, makes the sparse path's radii tighter); never torch.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import numpy as np

from coordgan.errors import CoordGANError

__all__ = ["MODES", "COORD_LIMIT", "lookup_dense", "lookup_sparse", "prepare"]

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

# Safety margin on radii found in float64 (cKDTree) and used for float32 distances.
_RADIUS_MARGIN = 1e-5


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


def _as_int(value: object) -> int | None:
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
        k_int = _as_int(k)
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
# The block kernel: B queries against L reference pixels, dense. Both paths are loops around it.


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


def _block(qx, qy, kx, ky, vaug, tau: float, mode: str, k: int | None, ws: _Workspace, shift=None) -> np.ndarray:
    """P for B queries against L reference pixels: (C, B) float32.

    hard/topk break ties by column index, so their columns must be in increasing j order.
    ``shift`` (soft, optional): each query's distance to its nearest pixel, known in advance (the
    sparse path has it from cKDTree), which saves the row minimum; any value <= that distance
    (+ rounding) gives the same result, since the softmax is shift-invariant.
    """
    d = _distances(qx, qy, kx, ky, ws)
    c = vaug.shape[1] - 1
    if mode == "hard":
        nearest = d.argmin(axis=1)  # first minimum = lowest j
        return vaug[nearest, :c].T
    keep = _topk_mask(d, k) if mode == "topk" else None
    # softmax(-d/tau) with the max logit subtracted: w = exp((d - d_min) / -tau), as the reference.
    dmin = d.min(axis=1, keepdims=True) if shift is None else shift[:, None]
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
    elif _as_int(chunk) is None or chunk < 1:
        raise CoordGANError(f"chunk must be a positive integer, got {chunk!r}.")
    out = np.empty((x.n, x.c, x.hq * x.wq), np.float32)
    ws = _Workspace()
    for i in range(x.n):
        _dense_item(x, i, out, int(chunk), ws)
    return _finish(out, x.hq, x.wq)


# --------------------------------------------------------------------------------------------------
# Sparse.




def _kdtree():
    try:
        from scipy.spatial import cKDTree
    except ImportError:
        return None
    return cKDTree


class _Grid:
    """Reference pixels bucketed into g x g square cells covering [-COORD_LIMIT, COORD_LIMIT]^2.

    Rows are stored sorted by cell (stable, so j order inside a cell): every cell is a contiguous
    slice, and one row holds [x, y, V..., 1] so a tile's pixels come out of a single gather.
    """

    def __init__(self, kx: np.ndarray, ky: np.ndarray, vaug: np.ndarray, g: int) -> None:
        self.g = g
        self.side = 2 * COORD_LIMIT / g
        cell = self.cell_of(ky) * g + self.cell_of(kx)
        self.order = np.argsort(cell, kind="stable")  # sorted position -> j
        self.data = np.concatenate([kx[:, None], ky[:, None], vaug], axis=1)[self.order]
        self.counts = np.bincount(cell, minlength=g * g)
        self.start = np.cumsum(self.counts) - self.counts

    def cell_of(self, v: np.ndarray, cells_per_step: int = 1) -> np.ndarray:
        step = self.side * cells_per_step
        top = -(-self.g // cells_per_step) - 1
        return np.clip(((v.astype(np.float64) + COORD_LIMIT) / step).astype(np.int64), 0, top)


class _Stencil:
    """The cells around a tile of a x a cells, out to w cells on each side, in padded grid coordinates
    (a tile at cell (ty*a, tx*a) sees padded cells (ty*a + sv, tx*a + su), sv, su in [0, a + 2w)).

    gap: smallest distance from any point of the tile to any point of the cell; far: the largest.
    """

    def __init__(self, a: int, w: int, side: float, counts: np.ndarray, g: int, gt: int) -> None:
        self.a, self.w = a, w
        u = np.arange(-w, a + w)
        gap1 = side * np.maximum(0, np.maximum(u - a, -u - 1))
        far1 = side * np.maximum(u + 1, a - u)
        n = u.size
        self.gap = np.sqrt(gap1[:, None] ** 2 + gap1[None, :] ** 2).ravel()
        self.far = np.sqrt(far1[:, None] ** 2 + far1[None, :] ** 2).ravel()
        self.sv, self.su = np.divmod(np.arange(n * n), n)
        self.width = gt * a + 2 * w
        padded = np.zeros((self.width, self.width), np.int64)
        padded[w : w + g, w : w + g] = counts.reshape(g, g)
        self.padded = padded.ravel()

    @property
    def size(self) -> int:
        return self.gap.size

    def counts(self, ty: np.ndarray, tx: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """(T, len(slots)) pixel counts of the given stencil slots around each tile."""
        base = ty * self.a * self.width + tx * self.a
        return self.padded[base[:, None] + (self.sv[slots] * self.width + self.su[slots])[None, :]]


def _default_cells(m: int) -> int:
    # ~2 reference pixels per cell on an even map: finer cells tighten the bound, coarser ones
    # make the per-tile bookkeeping cheaper.
    return int(np.clip(round(math.sqrt(m / 2)), 1, 512))


@dataclass
class _Plan:
    grid: _Grid
    q_order: np.ndarray  # query indices grouped by tile
    q_bounds: np.ndarray  # tile t owns q_order[q_bounds[t] : q_bounds[t + 1]]
    pos: np.ndarray  # cell-sorted pixel positions each tile needs, tile after tile
    p_bounds: np.ndarray
    dense_queries: np.ndarray  # queries of tiles too far from everything: done densely
    pairs: int
    shift: np.ndarray | None  # soft: each query's nearest-pixel distance (cKDTree), else None


def _near_from_cells(grid: _Grid, a: int, gt: int, ty, tx, kq: int) -> np.ndarray:
    """Without scipy: per tile, an upper bound on the distance from any of its queries to its kq-th
    nearest pixel: the smallest r such that the cells lying wholly within r of the tile hold >= kq
    pixels. Looser than cKDTree's exact distances (by about a tile diagonal), never wrong."""
    w = max(1, a)
    while True:
        st = _Stencil(a, w, grid.side, grid.counts, grid.g, gt)
        by_far = np.argsort(st.far, kind="stable")
        cum = np.cumsum(st.counts(ty, tx, by_far), axis=1)
        idx = (cum < kq).sum(axis=1)
        found = idx < st.size
        if found.mean() >= 0.95 or a + 2 * w >= 2 * grid.g:
            return np.where(found, st.far[by_far][np.minimum(idx, st.size - 1)], np.inf)
        w *= 2


def _plan_item(x: Prepared, i: int, tol: float, tile: int, cells: int | None) -> _Plan | None:
    """Which pixels each query tile must see (None: the radius spans the map, go dense)."""
    m, tau, mode = x.m, x.tau, x.mode
    qx, qy = x.qx[i], x.qy[i]
    nq = qx.size
    g = cells or _default_cells(m)
    grid = _Grid(x.kx[i], x.ky[i], x.vaug[i], g)
    side = grid.side

    # Query tiles of a x a cells, ~`tile` queries each where the queries are spread evenly.
    a = int(np.clip(round(math.sqrt(tile * g * g / nq)), 1, g))
    gt = -(-g // a)
    tq = grid.cell_of(qy, a) * gt + grid.cell_of(qx, a)
    q_order = np.argsort(tq, kind="stable")
    tq_sorted = tq[q_order]
    first = np.flatnonzero(np.r_[True, tq_sorted[1:] != tq_sorted[:-1]])
    q_bounds = np.r_[first, nq]
    ty, tx = np.divmod(tq_sorted[first], gt)

    # d_near[t] >= the distance from every query of tile t to its nearest (topk: k-th) pixel.
    kq = x.k if mode == "topk" else 1
    tree = _kdtree()
    shift = None
    if tree is not None:
        pts = np.stack([x.kx[i], x.ky[i]], axis=1).astype(np.float64)
        dist = tree(pts).query(np.stack([qx, qy], axis=1).astype(np.float64), k=[kq])[0][:, 0]
        d_near = np.maximum.reduceat(dist[q_order], first)
        if mode == "soft":
            shift = dist.astype(np.float32)
    else:
        d_near = _near_from_cells(grid, a, gt, ty, tx, kq)
    d_near = d_near + _RADIUS_MARGIN
    # Soft: pixels farther than d_near + extra weigh <= tol / (2M) each (see lookup_sparse).
    extra = tau * math.log(2 * m / tol) if mode == "soft" else 0.0
    finite = d_near[np.isfinite(d_near)]
    if finite.size == 0:
        return None
    # Stencil reach: enough for every tile; if that spans the map, enough for 99% of them (the
    # rest, far from every pixel, go dense); if even that spans the map, all go dense.
    for reach in (finite.max(), np.quantile(finite, 0.99)):
        w = int(math.ceil((float(reach) + extra) / side)) + 1
        if a + 2 * w < g:
            break
    else:
        return None
    st = _Stencil(a, w, side, grid.counts, g, gt)
    # Tiles whose radius reaches past the stencil (queries far from every pixel) go dense.
    far_tile = d_near + extra >= w * side
    # Stencil slots by increasing gap; slots at gap >= w*side lie beyond every kept tile's r_out.
    by_gap = np.argsort(st.gap, kind="stable")
    by_gap = by_gap[st.gap[by_gap] < w * side]
    gap = st.gap[by_gap]
    cnt = st.counts(ty, tx, by_gap)  # (T, S)
    if mode == "soft":
        cut = _soft_cut(cnt, gap, np.where(far_tile, d_near.min(), d_near), tau, tol)
    else:
        cut = np.searchsorted(gap, d_near, side="right")
    keep = (np.arange(gap.size)[None, :] < cut[:, None]) & (cnt > 0) & ~far_tile[:, None]
    ti, si = np.nonzero(keep)  # grouped by tile
    slot = by_gap[si]
    ids = (ty[ti] * a + st.sv[slot] - w) * g + (tx[ti] * a + st.su[slot] - w)
    n_pix = grid.counts[ids]
    starts = grid.start[ids]
    # positions of all pixels of the kept cells: concatenated ranges [start, start + count)
    pos = np.repeat(starts - (np.cumsum(n_pix) - n_pix), n_pix) + np.arange(int(n_pix.sum()))
    per_tile = np.bincount(ti, weights=n_pix, minlength=first.size).astype(np.int64)
    p_bounds = np.r_[0, np.cumsum(per_tile)]
    if mode != "soft":  # hard / topk break ties on j: columns in j order within each tile
        tile_of = np.repeat(np.arange(first.size), per_tile)
        pos = pos[np.lexsort((grid.order[pos], tile_of))]
    q_count = np.diff(q_bounds)
    dense_queries = np.concatenate([q_order[q_bounds[t] : q_bounds[t + 1]] for t in np.flatnonzero(far_tile)] or [[]])
    pairs = int((q_count * per_tile).sum()) + dense_queries.size * m
    return _Plan(grid, q_order, q_bounds, pos, p_bounds, dense_queries.astype(np.int64), pairs, shift)


def _soft_cut(cnt: np.ndarray, gap: np.ndarray, d_near: np.ndarray, tau: float, tol: float) -> np.ndarray:
    """Per tile, how many of the gap-sorted cells to keep: the bound on a cell's pixels' weight
    relative to the nearest pixel is count * exp(-(gap - d_near)/tau); the cells kept are the
    nearest ones, as few as leave a sum of bounds <= tol/2 for the rest."""
    g0 = float(d_near.min())
    if max(float(gap[-1]) - g0, float(d_near.max()) - g0) / tau < 600:
        # separable: count * exp(-(gap - g0)/tau) summed, against tol/2 * exp(-(d_near - g0)/tau)
        # (no exp over the whole (T, S) array; the exponents stay inside float64 range)
        terms = cnt * np.exp(-(gap - g0) / tau)[None, :]
        limit = (tol / 2) * np.exp(-(d_near - g0) / tau)
    else:
        terms = cnt * np.exp(np.minimum((d_near[:, None] - gap[None, :]) / tau, 80.0))
        limit = np.full(d_near.shape, tol / 2)
    tail = np.cumsum(terms[:, ::-1], axis=1)[:, ::-1]
    return (tail > limit[:, None]).sum(axis=1)


def lookup_sparse(
    query,
    ref_maps,
    ref_probs,
    tau: float = 0.01,
    mode: str = "soft",
    k: int | None = None,
    *,
    tol: float = 1e-4,
    tile: int = 32,
    cells: int | None = None,
    dense_above: float = 0.25,
    info: dict | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Lookup that skips reference pixels whose softmax weight is provably negligible.

    Error bound (soft mode). For a query q let d0 be its distance to the nearest reference pixel.
    That pixel's weight exp(-d0/tau) is part of the softmax denominator, so a pixel at distance d
    has normalised weight <= exp(-(d - d0)/tau). Leaving out a set S of pixels moves P[:, q] by
    at most max(V) times the neglected mass, and

        neglected mass <= sum_{j in S} exp(-(d_j - d0)/tau).

    * Simple radius bound: leave out every pixel farther than r from q. There are at most
      M = R*Hk*Wk of them, each <= exp(-(r - d0)/tau), so the neglected mass is
      <= M exp(-(r - d0)/tau), which is <= tol when r >= d0 + tau ln(M / tol).
      (tau = 0.01, M = 128*128, tol = 1e-4: r = d0 + 0.19.)
    * What is used, tighter: reference pixels are bucketed into grid cells, queries into tiles of
      a x a cells. For a tile T, let D >= d0(q) for all its queries (largest nearest-pixel
      distance: cKDTree, or a cell-based upper bound without scipy) and gap(T, c) the smallest
      distance between T and a cell c holding n_c pixels. Then for every query of T

        neglected mass <= sum_{c left out} n_c exp(-(gap(T, c) - D)/tau).

      Cells beyond r_out = D + tau ln(2M/tol) add up to <= tol/2 by the simple bound. Of the
      cells inside, the farthest are left out while the sum of their terms stays <= tol/2. The
      neglected mass per query is thus <= tol, and |P_sparse - P_exact| <= tol * max(V). On
      smooth 128x128 maps the kept cells reach ~0.15 beyond the tile, where the simple bound needs
      D + 0.2 (far fewer than M pixels lie at each distance); the error actually seen is ~100x
      below tol, because queries sit inside their tile, farther from the left-out cells than gap.

    hard keeps the cells within D + 1e-5 of the tile (D: largest nearest-pixel distance) and
    takes the first minimum of the exact float32 distances over columns in j order, so it returns
    exactly the dense result, ties included (a k-d tree alone returns an arbitrary tied pixel).
    topk does the same with D = largest k-th-nearest distance: exact as well.

    Falls back to the dense path (``info["path"] == "dense"``) when the tiles would evaluate more
    than ``dense_above`` of all pairs: large tau, small maps, or scattered maps. Queries far from
    every reference pixel (their tile's radius leaves the stencil) are computed densely.

    Args:
        tau, mode, k: as in ``coordgan.correspondence.lookup``.
        tol: bound on the neglected softmax mass per query (soft mode), 0 < tol < 1.
        tile: target number of queries per tile (fewer: tighter radii, more Python overhead).
        cells: grid cells per side for the reference pixels (default ~sqrt(M / 2)).
        dense_above: fraction of all pairs above which the dense path is used.
        info: optional dict, filled with ``path`` ("sparse" or "dense"), ``pairs`` (pairs
            evaluated) and ``dense_pairs`` (N * Hq*Wq * M).

    Returns:
        P (N, C, Hq, Wq) float32 and labels (N, Hq, Wq) int32.
    """
    x = prepare(query, ref_maps, ref_probs, tau=tau, mode=mode, k=k)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 < tol < 1:
        raise CoordGANError(f"tol must be a number strictly between 0 and 1, got {tol!r}.")
    for name, value in (("tile", tile), ("cells", 1 if cells is None else cells)):
        if _as_int(value) is None or value < 1:
            raise CoordGANError(f"{name} must be a positive integer, got {value!r}.")
    n, m, nq = x.n, x.m, x.hq * x.wq
    stats = {"path": "sparse", "pairs": 0, "dense_pairs": n * nq * m}
    out = np.empty((n, x.c, nq), np.float32)
    ws = _Workspace()
    dense_chunk = _dense_chunk(m, x.mode, _DEFAULT_BUDGET)

    plans: list | None = None
    # Skip planning where the answer is known: the simple radius spans the square, or every
    # query needs more than `dense_above` of the pixels anyway.
    if not (x.mode == "soft" and tau * math.log(2 * m / tol) >= 2 * COORD_LIMIT) and not (
        x.mode == "topk" and x.k > dense_above * m
    ):
        plans = []
        for i in range(n):
            plan = _plan_item(x, i, tol, int(tile), cells)
            if plan is None:
                plans = None
                break
            plans.append(plan)
        if plans is not None and sum(p.pairs for p in plans) > dense_above * stats["dense_pairs"]:
            plans = None
    if plans is None:
        stats.update(path="dense", pairs=stats["dense_pairs"])
        for i in range(n):
            _dense_item(x, i, out, dense_chunk, ws)
    else:
        for i, plan in enumerate(plans):
            stats["pairs"] += plan.pairs
            _sparse_item(x, i, plan, out[i], ws)
            if plan.dense_queries.size:
                _dense_item(x, i, out, dense_chunk, ws, queries=plan.dense_queries)
    if info is not None:
        info.update(stats)
    return _finish(out, x.hq, x.wq)


def _sparse_item(x: Prepared, i: int, plan: _Plan, out: np.ndarray, ws: _Workspace) -> None:
    qx, qy, data, shift = x.qx[i], x.qy[i], plan.grid.data, plan.shift
    qb, pb = plan.q_bounds.tolist(), plan.p_bounds.tolist()  # Python ints: cheaper slicing
    for t in range(len(qb) - 1):
        p0, p1 = pb[t], pb[t + 1]
        if p0 == p1:  # a tile of far queries, done densely
            continue
        qsel = plan.q_order[qb[t] : qb[t + 1]]
        blk = data[plan.pos[p0:p1]]
        kx, ky, va = blk[:, 0], blk[:, 1], blk[:, 2:]
        step = max(1, _CACHE_BYTES // (4 * (p1 - p0)))  # keep the (B, L) scratch near cache size
        for s in range(0, qsel.size, step):
            sel = qsel[s : s + step]
            sh = None if shift is None else shift[sel]
            out[:, sel] = _block(qx[sel], qy[sel], kx, ky, va, x.tau, x.mode, x.k, ws, sh)
