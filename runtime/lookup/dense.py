"""The dense CPU lookup: every (query, reference) pair, numpy float32, exact.

Chunked over queries so the working set stays inside a memory budget (and near the cache size);
per chunk, distances from direct differences, the stable softmax and one GEMM against V with a
column of ones (so the same product gives the weighted sums and the normaliser). It matches the
torch reference to ~1e-6.
"""

from __future__ import annotations

import numpy as np

from runtime.errors import CoordGANError
from runtime.lookup import spec
from runtime.lookup.inputs import Prepared, finish, prepare

# One query row costs ~3 float32 buffers of M entries (distances, dy, topk scratch).
DEFAULT_BUDGET = 256 << 20
# Below the budget, small chunks are faster (the buffers stay in cache): ~2 MiB per buffer.
_CACHE_BYTES = 2 << 20


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
    np.maximum(d, spec.LOGIT_FLOOR, out=d)
    w = np.exp(d, out=d)
    if keep is not None:
        np.multiply(w, keep, out=w)
    s = w @ vaug  # (B, C + 1): the last column is sum_j w
    return (s[:, :c] / s[:, c:]).T


def default_chunk(m: int, mode: str, memory_budget: int = DEFAULT_BUDGET) -> int:
    """Query pixels per step: scratch buffers near cache size, capped by the memory budget."""
    per_row = 4 * m * (4 if mode == "topk" else 2)
    cache_rows = max(8, _CACHE_BYTES // (4 * m))
    return max(1, min(cache_rows, memory_budget // per_row))


def dense_into(x: Prepared, out: np.ndarray, chunk: int | None = None) -> None:
    """Every batch item of x into out (N, C, Hq*Wq)."""
    chunk = chunk or default_chunk(x.m, x.mode)
    ws = _Workspace()
    for i in range(x.n):
        qx, qy = x.qx[i], x.qy[i]
        for s in range(0, qx.shape[0], chunk):
            sel = slice(s, s + chunk)
            out[i][:, sel] = _block(qx[sel], qy[sel], x.kx[i], x.ky[i], x.vaug[i], x.tau, x.mode, x.k, ws)


def lookup_dense(
    query,
    ref_maps,
    ref_probs,
    tau: float = 0.01,
    mode: str = "soft",
    k: int | None = None,
    chunk: int | None = None,
    memory_budget: int = DEFAULT_BUDGET,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact lookup over every reference pixel, numpy float32, same result as the reference.

    Args:
        query, ref_maps, ref_probs: Q (N, 2, Hq, Wq), K (N, R, 2, Hk, Wk), V (N, R, C, Hk, Wk)
            arrays (coordinates float16/32/64; V any real dtype, >= 0).
        tau, mode, k: as in runtime.lookup.spec.
        chunk: query pixels per step; default: what keeps the scratch buffers near cache size,
            capped by ``memory_budget``.
        memory_budget: bytes of scratch per step (each query row holds 2-4 float32 rows of M).

    Returns:
        P (N, C, Hq, Wq) float32 and labels (N, Hq, Wq) int32.
    """
    x = prepare(query, ref_maps, ref_probs, tau=tau, mode=mode, k=k)
    if chunk is None:
        chunk = default_chunk(x.m, x.mode, memory_budget)
    elif spec.as_int(chunk) is None or chunk < 1:
        raise CoordGANError(f"chunk must be a positive integer, got {chunk!r}.")
    out = np.empty((x.n, x.c, x.hq * x.wq), np.float32)
    dense_into(x, out, int(chunk))
    return finish(out, x.hq, x.wq)
