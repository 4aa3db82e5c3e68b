"""Correspondence lookup without torch: numpy on the CPU (dense or sparse), the fused kernel on a GPU.

One semantics, defined by ``coordgan.correspondence.lookup`` (torch): Q (N, 2, Hq, Wq), K (N, R, 2,
Hk, Wk), V (N, R, C, Hk, Wk) -> P (N, C, Hq, Wq) float32, labels (N, Hq, Wq) int32.

    from runtime.lookup import lookup
    p, labels = lookup(q, k, v, tau=0.01, mode="soft")           # numpy in, numpy out

The CPU's sparse path is compiled with numba (``runtime/lookup/_sparse_kernels.py``, cached on
disk after the first call). ``device="cuda"`` runs the fused kernel (needs cuda-python and a GPU;
numpy arrays are copied in and out). To run on device memory another framework owns, use
:func:`runtime.lookup.cuda.lookup_device` with raw pointers.
"""

from __future__ import annotations

from runtime.errors import CoordGANError
from runtime.lookup.cpu import MODES, default_threads, lookup_dense, lookup_sparse

__all__ = ["MODES", "lookup", "lookup_dense", "lookup_sparse", "cuda_available", "default_threads"]

_DEVICES = ("auto", "cpu", "cuda")
_METHODS = ("auto", "dense", "sparse")


def cuda_available() -> bool:
    """True when cuda-python is importable and a CUDA GPU answers (never raises)."""
    try:
        from runtime.lookup import cuda as _cuda
    except Exception:  # pragma: no cover - the module itself is import-safe
        return False
    return _cuda.available()


def _fits_kernel(ref_probs, mode: str, k) -> bool:
    shape = getattr(ref_probs, "shape", ())
    if len(shape) != 5 or shape[2] > 64:
        return False
    return not (mode == "topk" and isinstance(k, int) and k > 64)


def lookup(
    query,
    ref_maps,
    ref_probs,
    *,
    tau: float = 0.01,
    mode: str = "soft",
    k: int | None = None,
    device: str = "auto",
    method: str = "auto",
    tol: float = 1e-4,
    threads: int | None = None,
):
    """Propagate label probabilities from reference pixels to query pixels (numpy arrays).

    Args:
        query, ref_maps, ref_probs: Q, K, V numpy arrays (see the module docstring).
        tau, mode, k: as in the torch reference (softmax temperature, "soft"/"hard"/"topk", k).
        device: "cpu", "cuda", or "auto" (the GPU kernel when cuda-python and a GPU are there and
            the op fits it, C <= 64 and k <= 64; else the CPU).
        method: CPU only: "dense" (exact), "sparse" (per query, skips the pixels whose total weight
            is provably below ``tol``; exact for hard/topk; compiled with numba, and the dense path
            where numba is missing), or "auto" (= sparse, which falls back to dense itself where
            that is faster).
        tol: neglected softmax mass per query allowed to the sparse path.
        threads: CPU threads of the sparse path (default: the CPUs available, capped by
            OMP_NUM_THREADS); the dense path's BLAS follows its own settings (OPENBLAS_NUM_THREADS...).

    Returns:
        P (N, C, Hq, Wq) float32 and labels (N, Hq, Wq) int32, numpy.
    """
    if device not in _DEVICES:
        raise CoordGANError(f"device must be one of 'auto', 'cpu' or 'cuda', got {device!r}.")
    if method not in _METHODS:
        raise CoordGANError(f"method must be one of 'auto', 'dense' or 'sparse', got {method!r}.")
    if device == "auto":
        # the kernel covers C <= 64 and k <= 64; a CPU method asked for by name means the CPU
        device = "cuda" if method == "auto" and _fits_kernel(ref_probs, mode, k) and cuda_available() else "cpu"
    if device == "cuda":
        if method != "auto":
            raise CoordGANError(f"method={method!r} chooses between CPU paths; use device='cpu' with it.")
        from runtime.lookup import cuda as _cuda

        return _cuda.lookup_numpy(query, ref_maps, ref_probs, tau=tau, mode=mode, k=k)
    if method == "dense":
        return lookup_dense(query, ref_maps, ref_probs, tau=tau, mode=mode, k=k)
    return lookup_sparse(query, ref_maps, ref_probs, tau=tau, mode=mode, k=k, tol=tol, threads=threads)
