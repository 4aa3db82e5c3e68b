"""The correspondence lookup op: its definition, its limits and its argument rules, read by every path.

Inputs
    query     Q  (N, 2, Hq, Wq)       correspondence maps of the frames to label (x, y in [-1, 1])
    ref_maps  K  (N, R, 2, Hk, Wk)    correspondence maps of R reference frames per batch item
    ref_probs V  (N, R, C, Hk, Wk)    label probabilities (any values >= 0, e.g. one-hot) of those frames

Reference pixels are flattened in the order ``j = (r, y, x)`` row-major, so ``M = R * Hk * Wk``;
query pixels ``i = (y, x)`` row-major. With ``d_ij = ||Q[n, :, i] - K[n, :, j]||_2`` (L2 distance,
*not* squared, computed from direct coordinate differences in float32):

    soft   P[n, :, i] = sum_j softmax_j(-d_ij / tau) * V[n, :, j]          (sum over all M pixels)
    hard   P[n, :, i] = V[n, :, j*],  j* = argmin_j d_ij                   (lowest j on exact ties)
    topk   the soft formula restricted to the k nearest j of each query    (ties broken by lower j)

``labels[n, i] = argmax_c P[n, c, i]`` (first maximum on ties), int32; ``P`` is float32 whatever the
input dtype. ``topk`` with ``k = M`` equals ``soft``; ``topk`` with ``k = 1`` equals ``hard``. The
softmax is evaluated stably, ``w_ij = exp((d_min,i - d_ij) / tau)``, ``P = sum_j w_ij V_j / sum_j
w_ij``. The published evaluation (NVlabs/CoordGAN ``eval_corr.py``) is the soft mode, tau = 0.01.

Implementations, all tested against the torch reference (``coordgan.correspondence.lookup``):

    dense        runtime/lookup/dense.py        numpy, every pair, exact
    sparse       runtime/lookup/sparse.py       numba, only the pairs that can carry weight (the bound: its module docstring)
    cuda         runtime/lookup/cuda.py         the fused kernel corr_lookup.cu (also the TensorRT plugin)
    cuda-sparse  runtime/lookup/cuda_sparse.py  sparse's bound on a GPU (corr_lookup_sparse.cu)

``runtime.lookup.lookup(..., impl=...)`` chooses among them (``auto``: ``choose_impl``); this module
holds what they share: the names, the kernel's limits and one sentence for every argument a caller
can get wrong. Value checks (NaN, range, sign) are stated here as sentences over statistics each
framework computes. ``LookupParams`` is what a user asks of a propagation's lookup (memory, tau,
mode, k), checked once here for every command and server that takes them.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import numpy as np

from runtime.errors import CoordGANError

MODES = ("soft", "hard", "topk")
IMPLS = ("auto", "dense", "sparse", "cuda", "cuda-sparse")

MAX_CLASSES = 64  # the CUDA kernel's (and so the TensorRT plugin's) largest class count C
MAX_TOPK = 64  # ... and its largest k in topk mode

# Correspondence maps come out of tanh; allow a little slack for float16 rounding and resampling.
COORD_LIMIT = 1.0 + 1e-3

# Logits below -50 are clamped by the CPU paths: exp(-50) ~ 2e-22, so the change is < M * 2e-22
# relative, but without it exp() returns subnormals and both exp and the GEMM slow down 5-20x.
LOGIT_FLOOR = -50.0

QUERY_LAYOUT = "(N, 2, Hq, Wq)"
REF_MAPS_LAYOUT = "(N, R, 2, Hk, Wk)"
REF_PROBS_LAYOUT = "(N, R, C, Hk, Wk)"


def as_int(value: object) -> int | None:
    """value as an int (Python or numpy integer), or None for anything else, bool included."""
    if isinstance(value, (bool, np.bool_)):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def check_positive_int(name: str, value: object) -> int:
    number = as_int(value)
    if number is None or number < 1:
        raise CoordGANError(f"{name} must be a positive integer, got {value!r}.")
    return number


def check_tau(tau: object) -> float:
    if (isinstance(tau, (bool, np.bool_)) or not isinstance(tau, (int, float, np.integer, np.floating))
            or not math.isfinite(float(tau)) or float(tau) <= 0):
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


def shape_text(shape) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def check_rank(name: str, shape, layout: str, rank: int) -> None:
    if len(shape) != rank:
        raise CoordGANError(f"{name} must have shape {layout}, got {shape_text(shape)}.")
    if 0 in tuple(shape):
        raise CoordGANError(f"{name} has an empty dimension (shape {shape_text(shape)}); every size must be at "
                            "least 1.")


def check_shapes(q_shape, k_shape, v_shape) -> None:
    """Q, K, V shapes agree (ranks checked, then the shared sizes)."""
    check_rank("query", q_shape, QUERY_LAYOUT, 4)
    check_rank("ref_maps", k_shape, REF_MAPS_LAYOUT, 5)
    check_rank("ref_probs", v_shape, REF_PROBS_LAYOUT, 5)
    if q_shape[1] != 2:
        raise CoordGANError(f"query must have shape {QUERY_LAYOUT} with 2 coordinate channels, got "
                            f"{shape_text(q_shape)}.")
    n = q_shape[0]
    expected_k = (n, k_shape[1], 2, k_shape[3], k_shape[4])
    if tuple(k_shape) != expected_k:
        raise CoordGANError(f"ref_maps must have shape {REF_MAPS_LAYOUT} = {expected_k} to match query, got "
                            f"{shape_text(k_shape)}.")
    expected_v = (n, k_shape[1], v_shape[2], k_shape[3], k_shape[4])
    if tuple(v_shape) != expected_v:
        raise CoordGANError(f"ref_probs must have shape {REF_PROBS_LAYOUT} = {expected_v} to match ref_maps, got "
                            f"{shape_text(v_shape)}.")


def check_coord_values(name: str, *, floating: bool, finite: bool, peak: float, dtype, kind: str = "array") -> None:
    """A correspondence map: floating point, finite, within [-1, 1] (it comes from tanh)."""
    if not floating:
        raise CoordGANError(f"{name} must be a floating-point {kind} of coordinates, got {dtype}.")
    if not finite:
        raise CoordGANError(f"{name} contains NaN or Inf.")
    if peak > COORD_LIMIT:
        raise CoordGANError(f"{name} has coordinates outside [-1, 1] (largest magnitude {peak:.4g}), so it is not a "
                            "correspondence map (those come from tanh).")


def check_prob_values(name: str, *, finite: bool, low: float) -> None:
    """Label probabilities: finite and >= 0 (bool / integer one-hot masks are welcome)."""
    if not finite:
        raise CoordGANError(f"{name} contains NaN or Inf.")
    if low < 0:
        raise CoordGANError(f"{name} contains negative values (min {low:.4g}); label probabilities must be >= 0.")


def kernel_limit(c: int, mode: str, k: int | None) -> str | None:
    """Why the CUDA kernel cannot run this op (None: it can): C > 64 classes or topk with k > 64."""
    if c > MAX_CLASSES:
        return f"the CUDA lookup supports at most {MAX_CLASSES} classes, got C = {c}"
    if mode == "topk" and k is not None and k > MAX_TOPK:
        return f"the CUDA lookup keeps at most k = {MAX_TOPK} neighbours in topk mode, got k = {k}"
    return None


def check_impl(impl: object) -> str:
    if impl not in IMPLS:
        raise CoordGANError(f"impl must be one of {', '.join(map(repr, IMPLS))}, got {impl!r}.")
    return impl


def check_memory(memory: object) -> int:
    number = as_int(memory)
    if number is None or number < 0:
        raise CoordGANError(f"memory must be a whole number of frames, 0 or more, got {memory!r}.")
    return number


@dataclass(frozen=True)
class LookupParams:
    """What a propagation asks of its lookup, checked on creation (one wording for every caller):

    memory  recent propagated frames kept as references besides the annotated ones (M >= 0)
    tau     the softmax temperature (finite, > 0)
    mode    soft, hard or topk
    k       the neighbours kept in topk mode (>= 1; None otherwise)

    The bound k <= R*Hk*Wk depends on the memory's size and is applied per lookup (`args`)."""

    memory: int = 3
    tau: float = 0.01
    mode: str = "soft"
    k: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "memory", check_memory(self.memory))
        object.__setattr__(self, "tau", check_tau(self.tau))
        if self.mode not in MODES:
            raise CoordGANError(f"mode must be one of 'soft', 'hard' or 'topk', got {self.mode!r}.")
        if self.mode == "topk":
            object.__setattr__(self, "k", check_positive_int("The top-k count (--topk, --k)", self.k))
        elif self.k is not None:
            raise CoordGANError(f"A top-k count (--topk, --k) is only used with mode topk, but it was given "
                                f"({self.k!r}) with mode {self.mode}.")

    @classmethod
    def with_topk(cls, *, memory: int = 3, tau: float = 0.01, topk: int | None = None) -> "LookupParams":
        """The propagation options' form: topk None is the soft lookup over every reference pixel."""
        return cls(memory, tau, "soft" if topk is None else "topk", topk)

    @property
    def topk(self) -> int | None:
        return self.k if self.mode == "topk" else None

    def args(self, m: int) -> dict:
        """tau, mode and k for a lookup over m = R*Hk*Wk reference pixels (k capped at m)."""
        return {"tau": self.tau, "mode": self.mode, "k": None if self.k is None else min(self.k, m)}
