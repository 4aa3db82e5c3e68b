"""The sparse lookup on a GPU: ``corr_lookup_sparse.cu`` beside this file (its header has the design).

Per query only the reference pixels whose weight can matter, with the CPU sparse path's bound: soft
neglects at most ``tol`` of each query's softmax mass (|dP| <= tol * max(V)); hard and topk give the
dense result. Float32 inputs; C <= 64 and k <= 64 as the dense kernel.

The launch sequence (:func:`plan`) is plain Python over named buffers (the inputs, the outputs and
one workspace, :func:`workspace_layout`), run by one of two kernel sets compiled from the same text:

* ``"device"``: NVRTC's PTX (``runtime.lookup.cuda.compile_ptx``), launched with cuda-python on a GPU;
* ``"host"``: a C++ compiler's build with ``-DCLS_HOST``, each kernel a loop over its threads
  (atomics as plain updates). Slow, but it runs every kernel and this module's whole path, launches
  included, on a machine without a GPU: the suite tests it against the reference that way.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.errors import CoordGANError
from runtime.fileio import cache_dir
from runtime.lookup import spec
from runtime.lookup.inputs import checked

__all__ = ["SOURCE", "KERNELS", "Problem", "plan", "workspace_layout", "lookup_numpy", "lookup_device",
           "host_library", "kernel_names"]

SOURCE = Path(__file__).with_name("corr_lookup_sparse.cu")
KERNELS = ("device", "host")
BLOCK = 128  # CLS_BLOCK
CHUNK = 64  # CLS_CHUNK
GX_MAX = GY_MAX = 1024  # columns and bands of a batch item's grid at most
CELLS_MAX = 1 << 16  # gx * gy at most
SAT_MAX = CELLS_MAX + GX_MAX + GY_MAX + 1  # >= (gx + 1) * (gy + 1)
_ALIGN = 256


@dataclass(frozen=True)
class Problem:
    """The sizes and options of one lookup (validated by the entry points)."""

    n: int
    hq: int
    wq: int
    r: int
    hk: int
    wk: int
    c: int
    tau: float
    mode: str
    k: int | None
    tol: float

    @property
    def m(self) -> int:
        return self.r * self.hk * self.wk

    @property
    def cp(self) -> int:
        """Floats per sorted pixel's V row: the lookup kernel's CMAX."""
        from runtime.lookup.cuda import cmax_for

        return cmax_for(self.c)


def kernel_names() -> list[str]:
    build = ["cls_init", "cls_bounds", "cls_geometry", "cls_count", "cls_rows", "cls_cols", "cls_scatter"]
    return build + [f"cls_{m}_c{c}" for c in (1, 2, 4, 8, 16, 32, 64) for m in spec.MODES]


def workspace_layout(p: Problem) -> tuple[dict[str, tuple[int, np.dtype, int]], int]:
    """{name: (byte offset, dtype, count)} of the workspace buffers, and its size in bytes."""
    n, m = p.n, p.m
    i32, f32 = np.dtype(np.int32), np.dtype(np.float32)
    sizes = {"bounds": (i32, 4 * n), "geo": (f32, 4 * n), "dims": (i32, 2 * n), "pairs": (np.dtype(np.uint64), n),
             "cell": (i32, n * m), "cnt": (i32, n * CELLS_MAX), "sat": (i32, n * SAT_MAX),
             "sx": (f32, n * m), "sy": (f32, n * m), "sj": (i32, n * m), "sv": (f32, n * m * p.cp)}
    layout, offset = {}, 0
    for name, (dtype, count) in sizes.items():
        layout[name] = (offset, dtype, count)
        offset += -(-(count * dtype.itemsize) // _ALIGN) * _ALIGN
    return layout, offset


@dataclass(frozen=True)
class Launch:
    name: str
    count: int  # threads per batch item; grid = (ceil(count / BLOCK), items)
    items: int
    args: tuple  # ("ptr", buffer name) | ("i32", int) | ("f32", float)


def plan(p: Problem) -> list[Launch]:
    """The kernels of one lookup, in order (the .cu's header says what each does)."""
    def ptr(name):
        return ("ptr", name)

    def i32(v):
        return ("i32", int(v))

    def f32(v):
        return ("f32", float(v))

    n, m, hwk, hwq = p.n, p.m, p.hk * p.wk, p.hq * p.wq
    last = p.k if p.mode == "topk" else p.tol  # the lookup kernels take k in tol's place
    return [
        Launch("cls_init", CELLS_MAX, n, (ptr("cnt"), i32(CELLS_MAX), ptr("bounds"), ptr("pairs"))),
        Launch("cls_bounds", -(-m // CHUNK), n, (ptr("K"), i32(p.r), i32(hwk), ptr("bounds"))),
        Launch("cls_geometry", 1, n, (ptr("bounds"), i32(m), f32(p.tau), i32(GX_MAX), i32(GY_MAX), i32(CELLS_MAX),
                                      ptr("geo"), ptr("dims"))),
        Launch("cls_count", m, n, (ptr("K"), i32(p.r), i32(hwk), ptr("geo"), ptr("dims"), ptr("cell"), ptr("cnt"),
                                   i32(CELLS_MAX))),
        Launch("cls_rows", GY_MAX, n, (ptr("cnt"), i32(CELLS_MAX), ptr("dims"), ptr("sat"), i32(SAT_MAX))),
        Launch("cls_cols", GX_MAX + 1, n, (ptr("dims"), ptr("sat"), i32(SAT_MAX))),
        Launch("cls_scatter", m, n, (ptr("K"), ptr("V"), i32(p.r), i32(hwk), i32(p.c), i32(p.cp), ptr("dims"),
                                     ptr("cell"), ptr("cnt"), i32(CELLS_MAX), ptr("sat"), i32(SAT_MAX), ptr("sx"),
                                     ptr("sy"), ptr("sj"), ptr("sv"))),
        Launch(f"cls_{p.mode}_c{p.cp}", hwq, n, (ptr("Q"), i32(hwq), i32(m), i32(p.c), ptr("geo"), ptr("dims"),
                                                 ptr("sat"), i32(SAT_MAX), ptr("sx"), ptr("sy"), ptr("sj"), ptr("sv"),
                                                 f32(p.tau), f32(last), ptr("P"), ptr("labels"), ptr("pairs"))),
    ]


def _problem(n, hq, wq, r, hk, wk, c, tau, mode, k, tol) -> Problem:
    dims = [spec.check_positive_int(name, v) for name, v in
            (("n", n), ("hq", hq), ("wq", wq), ("r", r), ("hk", hk), ("wk", wk), ("c", c))]
    n, hq, wq, r, hk, wk, c = dims
    tau = spec.check_tau(tau)
    k = spec.check_mode(mode, k, r * hk * wk)
    limit = spec.kernel_limit(c, mode, k)
    if limit:
        raise CoordGANError(limit + ".")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 < tol < 1:
        raise CoordGANError(f"tol must be a number strictly between 0 and 1, got {tol!r}.")
    if n > 65535:
        raise CoordGANError(f"the CUDA lookup runs batch items along grid y, at most 65535 of them, got N = {n}.")
    if max(hq * wq, r * hk * wk) * max(64, c) >= 2**31:
        raise CoordGANError("the sparse CUDA lookup indexes pixels with 32-bit ints; these maps are too large.")
    return Problem(n, hq, wq, r, hk, wk, c, tau, mode, k, float(tol))


# --------------------------------------------------------------------------------------------------
# The two kernel sets


_host_lock = threading.Lock()
_host_lib: ctypes.CDLL | None = None


def host_library() -> ctypes.CDLL:
    """The kernels built for this CPU (-DCLS_HOST), compiled once per source text into the cache."""
    global _host_lib
    with _host_lock:
        if _host_lib is not None:
            return _host_lib
        compiler = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
        if compiler is None:
            raise CoordGANError("The host build of the sparse CUDA lookup needs a C++ compiler (c++, g++ or "
                                "clang++), and none is on PATH.")
        src = SOURCE.read_bytes()
        flags = ["-O2", "-shared", "-fPIC", "-DCLS_HOST", "-x", "c++"]
        key = hashlib.sha256(src + " ".join(flags).encode()).hexdigest()[:16]
        path = cache_dir("kernels") / f"{SOURCE.stem}-host-{key}.so"
        if not path.is_file():  # built beside it, then renamed: a half-written library is never loaded
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.stem}-{os.getpid()}.so")
            done = subprocess.run([compiler, *flags, str(SOURCE), "-o", str(tmp)], capture_output=True, text=True)
            if done.returncode != 0:
                tmp.unlink(missing_ok=True)
                raise CoordGANError(f"{compiler} could not build {SOURCE.name} for the host: "
                                    f"{done.stderr.strip()[:2000]}")
            os.replace(tmp, path)
        _host_lib = ctypes.CDLL(str(path))
        return _host_lib


_CTYPES = {"ptr": ctypes.c_void_p, "i32": ctypes.c_int32, "f32": ctypes.c_float}


def _run(kernels: str, launches: list[Launch], pointers: dict[str, int], stream: int = 0) -> None:
    """Run the launches, their ("ptr", name) arguments resolved through `pointers`."""
    if kernels == "device":
        from runtime import cuda_driver
        from runtime.lookup import cuda
    for launch in launches:
        values = [pointers[v] if kind == "ptr" else v for kind, v in launch.args]
        if kernels == "host":
            fn = getattr(host_library(), launch.name)
            fn.argtypes = [ctypes.c_int32, ctypes.c_int32] + [_CTYPES[kind] for kind, _ in launch.args]
            fn.restype = None
            fn(launch.count, launch.items, *values)
            continue
        driver, func = cuda.function(launch.name, SOURCE)
        # kernelParams as a void** (as runtime.lookup.cuda.lookup_device): pointers 8 bytes, scalars 4
        args = [ctypes.c_int32(launch.count), ctypes.c_int32(launch.items)] + [
            _CTYPES[kind](v) if kind != "ptr" else ctypes.c_uint64(v) for (kind, _), v in zip(launch.args, values)]
        params = (ctypes.c_void_p * len(args))(*[ctypes.addressof(a) for a in args])
        grid = (-(-launch.count // BLOCK), launch.items, 1)
        cuda_driver.check(driver.cuLaunchKernel(func, *grid, BLOCK, 1, 1, 0, driver.CUstream(int(stream)),
                                                ctypes.addressof(params), 0), f"cuLaunchKernel({launch.name})")


def _pointers(p: Problem, base: int, io: dict[str, int]) -> dict[str, int]:
    layout, _ = workspace_layout(p)
    return {**io, **{name: base + offset for name, (offset, _, _) in layout.items()}}


# --------------------------------------------------------------------------------------------------
# Entry points


def lookup_device(query_ptr: int, ref_maps_ptr: int, ref_probs_ptr: int, probs_out_ptr: int, labels_out_ptr: int,
                  *, n: int, hq: int, wq: int, r: int, hk: int, wk: int, c: int, tau: float = 0.01,
                  mode: str = "soft", k: int | None = None, tol: float = 1e-4, stream: int = 0) -> None:
    """Launch on device memory (float32 arrays laid out as runtime.lookup.cuda.lookup_device takes
    them), asynchronously on ``stream``; the workspace comes from the stream-ordered allocator.

    The values are not checked here: the bound and the exact hard / topk picks assume coordinates in
    [-1, 1] as the spec requires (run its value checks where the data is). NaN or infinite inputs
    end in NaN outputs, never in a hung kernel."""
    from runtime import cuda_driver

    p = _problem(n, hq, wq, r, hk, wk, c, tau, mode, k, tol)
    io = {}
    for name, ptr in (("Q", query_ptr), ("K", ref_maps_ptr), ("V", ref_probs_ptr), ("P", probs_out_ptr),
                      ("labels", labels_out_ptr)):
        value = spec.as_int(ptr)
        if value is None or value <= 0:
            raise CoordGANError(f"{name} must be a device pointer (a positive int), got {ptr!r}.")
        io[name] = value
    driver, _ = cuda_driver.context()
    _, size = workspace_layout(p)
    handle = driver.CUstream(int(stream))
    base = cuda_driver.check(driver.cuMemAllocAsync(size, handle), "cuMemAllocAsync")
    try:
        _run("device", plan(p), _pointers(p, int(base), io), stream)
    finally:
        driver.cuMemFreeAsync(base, handle)


def lookup_numpy(query, ref_maps, ref_probs, *, tau: float = 0.01, mode: str = "soft", k: int | None = None,
                 tol: float = 1e-4, kernels: str = "device", info: dict | None = None):
    """The sparse CUDA lookup on numpy arrays (copied in and out): P (N, C, Hq, Wq) float32 and labels
    (N, Hq, Wq) int32. ``kernels="host"`` runs the same kernels on the CPU (see the module docstring);
    ``info`` gets ``pairs`` (pixels evaluated) and ``dense_pairs``."""
    if kernels not in KERNELS:
        raise CoordGANError(f"kernels must be one of {', '.join(map(repr, KERNELS))}, got {kernels!r}.")
    (_, _, _), arrays, tau, k = checked(query, ref_maps, ref_probs, tau=tau, mode=mode, k=k)
    q, kmap, v = (np.ascontiguousarray(a, np.float32) for a in arrays)
    n, r, c, hk, wk = v.shape
    hq, wq = q.shape[2:]
    p = _problem(n, hq, wq, r, hk, wk, c, tau, mode, k, tol)
    probs = np.empty((n, c, hq, wq), np.float32)
    labels = np.empty((n, hq, wq), np.int32)
    layout, size = workspace_layout(p)
    pairs = np.empty(n, np.uint64)
    if kernels == "host":
        work = np.empty(size, np.uint8)
        io = {"Q": q.ctypes.data, "K": kmap.ctypes.data, "V": v.ctypes.data, "P": probs.ctypes.data,
              "labels": labels.ctypes.data}
        _run("host", plan(p), _pointers(p, work.ctypes.data, io))
        offset, _, _ = layout["pairs"]
        pairs[:] = work[offset:offset + 8 * n].view(np.uint64)
    else:
        from runtime import cuda_driver

        driver, _ = cuda_driver.context()
        host = {"Q": q, "K": kmap, "V": v, "P": probs, "labels": labels}
        device = {}
        try:
            for name, a in host.items():
                device[name] = cuda_driver.check(driver.cuMemAlloc(a.nbytes), "cuMemAlloc")
            device["work"] = cuda_driver.check(driver.cuMemAlloc(size), "cuMemAlloc")
            for name in ("Q", "K", "V"):
                cuda_driver.check(driver.cuMemcpyHtoD(device[name], host[name].ctypes.data, host[name].nbytes),
                                  "cuMemcpyHtoD")
            io = {name: int(device[name]) for name in host}
            _run("device", plan(p), _pointers(p, int(device["work"]), io))
            for name in ("P", "labels"):  # (synchronous copies: they wait for the kernels)
                cuda_driver.check(driver.cuMemcpyDtoH(host[name].ctypes.data, device[name], host[name].nbytes),
                                  "cuMemcpyDtoH")
            cuda_driver.check(driver.cuMemcpyDtoH(pairs.ctypes.data, int(device["work"]) + layout["pairs"][0],
                                                  pairs.nbytes), "cuMemcpyDtoH")
        finally:
            for d in device.values():
                driver.cuMemFree(d)
    if info is not None:
        info.update(pairs=int(pairs.sum()), dense_pairs=n * hq * wq * p.m, kernels=kernels)
    return probs, labels

