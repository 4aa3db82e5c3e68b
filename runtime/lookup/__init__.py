"""The correspondence lookup, in one place: its spec, the dense / sparse / CUDA paths, one dispatch.

    from runtime.lookup import lookup
    p, labels = lookup(q, k, v, tau=0.01, mode="soft")            # numpy in, numpy out

    spec.py          the op's definition, limits and argument rules (read by every path)
    inputs.py        numpy inputs checked and laid out for the CPU paths
    dense.py         every pair, numpy, exact
    sparse.py        only the pairs that can carry weight (numba kernels in kernels/), bounded error
    cuda.py          the fused kernel corr_lookup.cu through cuda-python (also the TensorRT plugin's)
    cuda_sparse.py   the sparse GPU kernel corr_lookup_sparse.cu (also built for the CPU, for tests)

The torch reference that defines the semantics is ``coordgan.correspondence.lookup`` (a layer up:
this package never imports torch); its ``impl=`` hands torch tensors to the paths here.
"""

from __future__ import annotations

import functools

import numpy as np

from runtime.devices import check_device
from runtime.errors import CoordGANError
from runtime.lookup import spec
from runtime.lookup.dense import lookup_dense
from runtime.lookup.sparse import lookup_sparse
from runtime.lookup.spec import IMPLS, MODES

__all__ = ["IMPLS", "MODES", "lookup", "lookup_dense", "lookup_sparse", "choose_impl", "impl_for_device",
           "cuda_available", "warm_up"]

# What the `device` options of the CLI and the Triton models (runtime.devices) mean for the lookup.
_DEVICE_IMPL = {"auto": "auto", "cpu": "sparse", "cuda": "cuda"}


@functools.cache
def cuda_available() -> bool:
    """True when cuda-python is importable and a CUDA GPU answers (never raises). Asked once per process:
    the probe costs about 0.4 ms, and "auto" asks on every lookup (a frame's, in propagation)."""
    from runtime import cuda_driver

    return cuda_driver.available()


def impl_for_device(device: str) -> str:
    """auto -> auto, cpu -> sparse (which runs dense itself where that is faster), cuda -> cuda."""
    return _DEVICE_IMPL[check_device(device, "device")]


def choose_impl(impl: str, *, classes: int, mode: str = "soft", k: int | None = None,
                on_gpu: bool | None = None) -> str:
    """The path that runs for `impl`, one of the five in spec.IMPLS: "dense", "sparse", "cuda" and
    "cuda-sparse" run as named (after the checks below); "auto" resolves to cuda or sparse.

    "auto" is the fused kernel when the data is on a GPU (on_gpu True), or when it is on the host
    (on_gpu None) and cuda-python finds a GPU, as long as the op fits the kernel (C <= 64, k <= 64);
    otherwise sparse. "cuda" or "cuda-sparse" (the sparse GPU kernel, not chosen by "auto" until
    it has been measured on a GPU) for an op the kernels cannot run is an error, as is "dense" or
    "sparse" for data on a GPU.
    """
    spec.check_impl(impl)
    limit = spec.kernel_limit(classes, mode, k)
    on_cuda = impl in ("cuda", "cuda-sparse")
    if impl == "auto":
        if on_gpu:
            if limit:
                raise CoordGANError(f"No lookup path takes these GPU tensors: {limit}.")
            return "cuda"
        return "cuda" if limit is None and on_gpu is None and cuda_available() else "sparse"
    if on_cuda and limit:
        raise CoordGANError(f"impl={impl!r} cannot run this lookup: {limit}.")
    if on_cuda and on_gpu is False:
        raise CoordGANError(f"impl={impl!r} runs a CUDA kernel and needs CUDA tensors; use impl='reference', "
                            "'dense' or 'sparse' on the CPU.")
    if on_gpu and not on_cuda:
        raise CoordGANError(f"impl={impl!r} runs on the CPU; these tensors are on a GPU (use impl='cuda' or 'auto').")
    return impl


def warm_up(impl: str = "auto", mode: str = "soft") -> None:
    """Where `impl` runs the sparse CPU path, load its compiled kernels now, on a background thread
    (runtime.lookup.sparse.warm_in_background); a caller about to run other work saves the first lookup
    that wait. Best beside work that leaves a core idle: `propagate` starts it before opening the
    encoder (mostly one thread), not beside an encoder batch (every thread)."""
    if impl == "sparse" or (impl == "auto" and not cuda_available()):
        from runtime.lookup.sparse import warm_in_background

        warm_in_background(mode)


def lookup(
    query,
    ref_maps,
    ref_probs,
    *,
    tau: float = 0.01,
    mode: str = "soft",
    k: int | None = None,
    impl: str = "auto",
    tol: float = 1e-4,
    threads: int | None = None,
    info: dict | None = None,
):
    """Propagate label probabilities from reference pixels to query pixels (numpy arrays).

    Args:
        query, ref_maps, ref_probs: Q (N, 2, Hq, Wq), K (N, R, 2, Hk, Wk), V (N, R, C, Hk, Wk).
        tau, mode, k: softmax temperature, "soft" / "hard" / "topk", k for topk (runtime.lookup.spec).
        impl: "dense" (exact), "sparse" (skips the pixels whose total weight is provably below
            ``tol``; exact for hard/topk; runs dense itself where that is faster or numba is
            missing), "cuda" (the fused kernel: needs cuda-python and a GPU; arrays are copied in
            and out), "cuda-sparse" (the sparse GPU kernel: sparse's bound, on a GPU), or "auto"
            (cuda where it runs and the op fits it, else sparse).
        tol: neglected softmax mass per query allowed to the sparse paths.
        threads: CPU threads of the sparse path (default: the CPUs available, capped by
            OMP_NUM_THREADS); the dense path's BLAS follows its own settings.
        info: a dict the sparse path fills with what it did (see ``lookup_sparse``), and every path
            with ``impl``.

    Returns:
        P (N, C, Hq, Wq) float32 and labels (N, Hq, Wq) int32, numpy.
    """
    shape = np.shape(ref_probs)
    chosen = choose_impl(impl, classes=shape[2] if len(shape) == 5 else 0, mode=mode, k=spec.as_int(k))
    if info is not None:
        info["impl"] = chosen
    if chosen == "cuda":
        from runtime.lookup import cuda

        return cuda.lookup_numpy(query, ref_maps, ref_probs, tau=tau, mode=mode, k=k)
    if chosen == "cuda-sparse":
        from runtime.lookup import cuda_sparse

        return cuda_sparse.lookup_numpy(query, ref_maps, ref_probs, tau=tau, mode=mode, k=k, tol=tol, info=info)
    if chosen == "dense":
        return lookup_dense(query, ref_maps, ref_probs, tau=tau, mode=mode, k=k)
    return lookup_sparse(query, ref_maps, ref_probs, tau=tau, mode=mode, k=k, tol=tol, threads=threads, info=info)
