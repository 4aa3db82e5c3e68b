"""numpy inputs of the lookup: checked by the rules of runtime.lookup.spec, laid out for the CPU paths."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from runtime.errors import CoordGANError
from runtime.lookup import spec


def as_array(name: str, value: object, layout: str, rank: int) -> np.ndarray:
    """A numeric, real numpy array of the given rank with no empty dimension."""
    try:
        a = np.asarray(value)
    except Exception as exc:  # ragged lists and the like
        raise CoordGANError(f"{name} must be an array of shape {layout}, got {type(value).__name__}.") from exc
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise CoordGANError(f"{name} must be a numeric array of shape {layout}, got dtype {a.dtype}.")
    if np.iscomplexobj(a):
        raise CoordGANError(f"{name} must be a real array, got {a.dtype}.")
    spec.check_rank(name, a.shape, layout, rank)
    return a


def check_coords(name: str, a: np.ndarray) -> np.ndarray:
    """float32 view/copy of a correspondence map after checking it is one."""
    floating = np.issubdtype(a.dtype, np.floating)
    f = a.astype(np.float32, copy=False) if floating else a
    finite = bool(np.isfinite(f).all()) if floating else True
    peak = float(np.abs(f).max()) if floating and finite else 0.0
    spec.check_coord_values(name, floating=floating, finite=finite, peak=peak, dtype=a.dtype)
    return f


def check_probs(name: str, a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float32, copy=False)
    finite = bool(np.isfinite(a).all())
    spec.check_prob_values(name, finite=finite, low=float(a.min()) if finite else 0.0)
    return a


def checked(query, ref_maps, ref_probs, *, tau, mode, k):
    """(Q, K, V as given, float32 views of them, tau, k): every rule of the spec, nothing laid out."""
    if mode not in spec.MODES:
        spec.check_mode(mode, k, 1)  # the mode is named first
    tau = spec.check_tau(tau)
    q = as_array("query", query, spec.QUERY_LAYOUT, 4)
    kmap = as_array("ref_maps", ref_maps, spec.REF_MAPS_LAYOUT, 5)
    v = as_array("ref_probs", ref_probs, spec.REF_PROBS_LAYOUT, 5)
    spec.check_shapes(q.shape, kmap.shape, v.shape)
    as_f32 = (check_coords("query", q), check_coords("ref_maps", kmap), check_probs("ref_probs", v))
    k_int = spec.check_mode(mode, k, kmap.shape[1] * kmap.shape[3] * kmap.shape[4])
    return (q, kmap, v), as_f32, tau, k_int


@dataclass
class Prepared:
    """Validated inputs in the layout the numpy paths use (all float32, C-contiguous)."""

    qx: np.ndarray  # (N, Hq*Wq)
    qy: np.ndarray  # (N, Hq*Wq)
    kx: np.ndarray  # (N, M), j = (r, y, x)
    ky: np.ndarray  # (N, M)
    v: np.ndarray  # (N, R, C, Hk*Wk): V as given (a view), pixel j = r * Hk*Wk + s at v[:, r, :, s]
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
        return self.v.shape[2]

    @functools.cached_property
    def vaug(self) -> np.ndarray:
        """(N, M, C + 1): V pixel-major with a column of ones, so one GEMM gives sum(w V) and sum(w)
        (the dense paths; made on first use)."""
        n, r, c, hw = self.v.shape
        vaug = np.empty((n, r * hw, c + 1), np.float32)
        vaug[..., :c] = self.v.transpose(0, 1, 3, 2).reshape(n, r * hw, c)
        vaug[..., c] = 1.0
        return vaug


def prepare(query: object, ref_maps: object, ref_probs: object, *, tau: object, mode: object, k: object) -> Prepared:
    """Validate like the reference and lay the inputs out for the numpy paths."""
    _, (q, kmap, v), tau, k_int = checked(query, ref_maps, ref_probs, tau=tau, mode=mode, k=k)
    n, r, c, hk, wk = v.shape
    m = r * hk * wk
    hq, wq = q.shape[2], q.shape[3]
    return Prepared(
        qx=np.ascontiguousarray(q[:, 0].reshape(n, hq * wq)),
        qy=np.ascontiguousarray(q[:, 1].reshape(n, hq * wq)),
        kx=np.ascontiguousarray(kmap[:, :, 0].reshape(n, m)),
        ky=np.ascontiguousarray(kmap[:, :, 1].reshape(n, m)),
        v=np.ascontiguousarray(v).reshape(n, r, c, hk * wk),
        hq=hq,
        wq=wq,
        tau=tau,
        mode=mode,
        k=k_int,
    )


# Lookup outputs smaller than this become 0. Propagation feeds each frame's probabilities back in as
# values, and unflushed a label's tiny probabilities shrink frame after frame into subnormal floats,
# on which x86 arithmetic is about 100x slower: with 255 labels one lookup grew from 0.3 to 3.8 s
# over 16 frames (0.46 s with this flush). A value of at least 1e-20 times a weight of at least 1e-18
# is still a normal float; what is dropped is far below anything a mask or a float16 can show.
FLUSH_BELOW = np.float32(1e-20)


def flush_tiny(p: np.ndarray) -> None:
    """Set the entries of p smaller in magnitude than FLUSH_BELOW to 0, in place."""
    tiny = np.abs(p) < FLUSH_BELOW
    if tiny.any():
        p[tiny] = 0.0


def finish(p: np.ndarray, hq: int, wq: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, C, HqWq) -> P (N, C, Hq, Wq) (tiny values flushed, in place) and labels (N, Hq, Wq) int32
    (first maximum on ties)."""
    flush_tiny(p)
    n, c, _ = p.shape
    labels = p.argmax(axis=1).astype(np.int32).reshape(n, hq, wq)
    return p.reshape(n, c, hq, wq), labels
