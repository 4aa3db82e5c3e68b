"""The fused correspondence-lookup kernel on a GPU, through cuda-python (driver API + NVRTC), no torch.

The kernel source is ``corr_lookup.cu`` beside this file (read that header for the semantics, the entry
points and the launch configuration). It is compiled at run time, never shipped compiled: NVRTC
(from cuda-python) turns it into PTX for the device's architecture, cached under
``$COORDGAN_CACHE`` (default ``~/.cache/coordgan``) keyed by source hash, architecture and NVRTC
version; ``COORDGAN_CORR_LOOKUP_PTX`` may instead name a PTX file built with
``nvcc -ptx -arch=compute_XY corr_lookup.cu``. The driver loads it with ``cuModuleLoadData``.

Two ways in:

* :func:`lookup_device` takes raw device pointers (ints) and a stream handle, so memory owned by
  any framework works (torch ``t.data_ptr()`` / ``torch.cuda.current_stream().cuda_stream``,
  CuPy ``a.data.ptr``, TensorRT bindings...). It validates shapes and attributes but cannot see
  the values; run the value checks of :mod:`runtime.lookup.spec` (NaN/Inf, range, V >= 0)
  where the data is.
* :func:`lookup_numpy` takes numpy arrays, validates them like the reference, copies them in,
  launches, and copies P and labels out.

cuda-python is imported on first use; without it, or without a GPU, a CoordGANError says so.
Both the ``cuda.bindings`` layout (cuda-python >= 12.6) and the older ``from cuda import cuda``
are supported.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import struct
import threading
from pathlib import Path

import numpy as np

from runtime import cuda_driver
from runtime.errors import CoordGANError
from runtime.fileio import atomic_write, cache_dir
from runtime.lookup import spec
from runtime.lookup.inputs import checked

__all__ = [
    "BLOCK",
    "CMAX_VALUES",
    "TOPK_MAX",
    "KERNEL_SOURCE",
    "available",
    "kernel_name",
    "launch_config",
    "compile_ptx",
    "lookup_device",
    "lookup_numpy",
]

BLOCK = 128  # CL_BLOCK in the .cu: threads per block = queries per block = pixels per tile
TOPK_MAX = spec.MAX_TOPK  # CL_TOPK_MAX
CMAX_VALUES = (1, 2, 4, 8, 16, 32, 64)  # the instantiations; the last is spec.MAX_CLASSES
KERNEL_SOURCE = Path(__file__).with_name("corr_lookup.cu")

_lock = threading.Lock()
_modules: dict = {}  # (context handle, source file name) -> (module, {name: function})


# --------------------------------------------------------------------------------------------------
# Names and launch geometry (pure Python: the TensorRT plugin and the tests use them too).


def cmax_for(c: int) -> int:
    """The instantiated class count a C runs on (the next one up; extra classes are masked)."""
    limit = spec.kernel_limit(c, "soft", None)
    if limit:
        raise CoordGANError(limit + ".")
    return next(cmax for cmax in CMAX_VALUES if c <= cmax)


def kernel_name(mode: str, dtype, c: int) -> str:
    """Entry point for a mode, an input dtype (float32/float16) and a class count C."""
    if mode not in spec.MODES:
        spec.check_mode(mode, None, 1)
    dt = np.dtype(dtype)
    if dt == np.float32:
        tname = "f32"
    elif dt == np.float16:
        tname = "f16"
    else:
        raise CoordGANError(f"the CUDA lookup takes float32 or float16 inputs, got {dt}.")
    return f"corr_lookup_{mode}_{tname}_c{cmax_for(c)}"


def all_kernel_names() -> list[str]:
    return [f"corr_lookup_{m}_{t}_c{c}" for c in CMAX_VALUES for t in ("f32", "f16") for m in spec.MODES]


def launch_config(n: int, hq: int, wq: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(grid, block): one thread per query pixel, blocks of BLOCK, batch items along grid y."""
    return ((hq * wq + BLOCK - 1) // BLOCK, n, 1), (BLOCK, 1, 1)


def tau_bits(tau: float) -> int:
    """tau as the int32 holding its float32 bits (how the kernel takes it)."""
    return struct.unpack("<i", struct.pack("<f", tau))[0]


def scalar_args(n: int, hwq: int, r: int, hwk: int, c: int, tau: float, k: int | None) -> list[int]:
    """The kernel's int32 scalar arguments, in order: N, Hq*Wq, R, Hk*Wk, C, tau bits, k."""
    return [n, hwq, r, hwk, c, tau_bits(tau), k or 0]


# cuda-python plumbing lives in runtime.cuda_driver (shared with the TensorRT backend).
available = cuda_driver.available


def _device_arch(driver) -> int:
    dev = cuda_driver.check(driver.cuCtxGetDevice(), "cuCtxGetDevice")
    attr = driver.CUdevice_attribute
    major = cuda_driver.check(driver.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev), "attr")
    minor = cuda_driver.check(driver.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev), "attr")
    return 10 * major + minor


def compile_ptx(arch: int | None = None, *, source: Path | None = None, cache: bool = True) -> bytes:
    """PTX of the kernel for compute capability ``arch`` (e.g. 90), compiled with NVRTC.

    Without ``arch``, the current device's (capped at the newest NVRTC supports). Needs cuda-python
    and its NVRTC library, but no GPU when ``arch`` is given. Returns NUL-terminated PTX.
    """
    _, nvrtc = cuda_driver.bindings()
    src = (source or KERNEL_SOURCE).read_bytes()
    if arch is None:
        driver, _ = cuda_driver.context()
        arch = _device_arch(driver)
    try:
        supported = list(cuda_driver.check(nvrtc.nvrtcGetSupportedArchs(), "nvrtcGetSupportedArchs"))
        version = cuda_driver.check(nvrtc.nvrtcVersion(), "nvrtcVersion")
    except CoordGANError:
        raise
    except Exception as exc:  # the NVRTC shared library itself is missing
        raise CoordGANError(f"NVRTC could not be loaded; install the nvidia-cuda-nvrtc wheel ({exc}).") from None
    usable = [a for a in supported if a <= arch]
    if not usable:
        raise CoordGANError(f"This NVRTC cannot compile for compute capability {arch / 10:.1f} (too old a GPU).")
    arch = max(usable)
    options = [f"--gpu-architecture=compute_{arch}".encode(), b"--std=c++14"]
    key = hashlib.sha256(src + b"\0".join(options) + repr(version).encode()).hexdigest()[:16]
    path = cache_dir("kernels") / f"{(source or KERNEL_SOURCE).stem}-{key}-compute_{arch}.ptx"
    if cache and path.is_file():
        return path.read_bytes()
    prog = cuda_driver.check(nvrtc.nvrtcCreateProgram(src, (source or KERNEL_SOURCE).name.encode(), 0, [], []),
                             "nvrtcCreateProgram")
    try:
        status = nvrtc.nvrtcCompileProgram(prog, len(options), options)
        if int(status[0]) != 0:
            size = cuda_driver.check(nvrtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
            log = b" " * size
            nvrtc.nvrtcGetProgramLog(prog, log)
            raise CoordGANError(
                f"NVRTC could not compile {(source or KERNEL_SOURCE).name}: "
                f"{log.decode(errors='replace').strip()[:2000]}"
            )
        size = cuda_driver.check(nvrtc.nvrtcGetPTXSize(prog), "nvrtcGetPTXSize")
        ptx = b" " * size
        cuda_driver.check(nvrtc.nvrtcGetPTX(prog, ptx), "nvrtcGetPTX")
    finally:
        nvrtc.nvrtcDestroyProgram(prog)
    if cache:  # atomically: a crash never leaves a truncated PTX behind
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(path) as f:
                f.write(ptx)
        except OSError:
            pass  # a read-only home only costs a recompile next time
    return ptx


def function(name: str, source: Path = KERNEL_SOURCE):
    """The loaded CUfunction for an entry point of `source` (this kernel's, or another .cu beside it),
    compiling and loading the module once per context; returns (driver, function)."""
    driver, ctx = cuda_driver.context()
    with _lock:
        key = (int(ctx), source.name)
        if key not in _modules:
            env_ptx = os.environ.get("COORDGAN_CORR_LOOKUP_PTX") if source == KERNEL_SOURCE else None
            if env_ptx:
                try:
                    ptx = Path(env_ptx).read_bytes()
                except OSError as exc:
                    raise CoordGANError(f"COORDGAN_CORR_LOOKUP_PTX names {env_ptx}, which cannot be read ({exc}).")
                ptx = ptx if ptx.endswith(b"\0") else ptx + b"\0"
            else:
                ptx = compile_ptx(source=source)
            status, module = driver.cuModuleLoadData(ptx)
            if int(status) != 0:
                raise CoordGANError(
                    f"The GPU driver could not load the lookup kernel ({getattr(status, 'name', status)}); an "
                    "NVIDIA driver older than the NVRTC that compiled it is the usual cause."
                )
            _modules[key] = (module, {})
        module, functions = _modules[key]
        if name not in functions:
            functions[name] = cuda_driver.check(driver.cuModuleGetFunction(module, name.encode()), f"cuModuleGetFunction({name})")
        return driver, functions[name]


# --------------------------------------------------------------------------------------------------
# Launch on device memory.


def lookup_device(
    query_ptr: int,
    ref_maps_ptr: int,
    ref_probs_ptr: int,
    probs_out_ptr: int,
    labels_out_ptr: int,
    *,
    n: int,
    hq: int,
    wq: int,
    r: int,
    hk: int,
    wk: int,
    c: int,
    dtype="float32",
    tau: float = 0.01,
    mode: str = "soft",
    k: int | None = None,
    stream: int = 0,
) -> None:
    """Launch the kernel on device memory, asynchronously on ``stream`` (a CUstream handle as int).

    Pointers are raw device addresses of contiguous arrays: Q (n, 2, hq, wq), K (n, r, 2, hk, wk),
    V (n, r, c, hk, wk), all of ``dtype`` (float32 or float16); P out (n, c, hq, wq) float32 and
    labels out (n, hq, wq) int32. The values are not checked here (see the module docstring).
    """
    dims = {name: spec.check_positive_int(name, v) for name, v in (("n", n), ("hq", hq), ("wq", wq), ("r", r), ("hk", hk),
                                                       ("wk", wk), ("c", c))}
    n, hq, wq, r, hk, wk, c = dims.values()
    tau = spec.check_tau(tau)
    k_int = spec.check_mode(mode, k, r * hk * wk)
    limit = spec.kernel_limit(c, mode, k_int)
    if limit:
        raise CoordGANError(limit + ".")
    if n > 65535:
        raise CoordGANError(f"the CUDA lookup runs batch items along grid y, at most 65535 of them, got N = {n}.")
    if max(hq * wq, r * hk * wk) >= 2**31:
        raise CoordGANError("the CUDA lookup indexes pixels with 32-bit ints; these maps are too large.")
    pointers = []
    for name, ptr in (("query", query_ptr), ("ref_maps", ref_maps_ptr), ("ref_probs", ref_probs_ptr),
                      ("probs_out", probs_out_ptr), ("labels_out", labels_out_ptr)):
        p = spec.as_int(ptr)
        if p is None or p <= 0:
            raise CoordGANError(f"{name} must be a device pointer (a positive int), got {ptr!r}.")
        pointers.append(p)
    name = kernel_name(mode, dtype, c)
    driver, func = function(name)
    grid, block = launch_config(n, hq, wq)
    # kernelParams as a void** built with ctypes: works with every cuda-python version. Order: inputs,
    # int32 scalars (tau as its float bits), outputs, as the .cu documents.
    values = [ctypes.c_uint64(p) for p in pointers[:3]] + [
        ctypes.c_int32(v) for v in scalar_args(n, hq * wq, r, hk * wk, c, tau, k_int)
    ] + [ctypes.c_uint64(p) for p in pointers[3:]]
    params = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])
    cuda_driver.check(
        driver.cuLaunchKernel(func, *grid, *block, 0, driver.CUstream(int(stream)), ctypes.addressof(params), 0),
        f"cuLaunchKernel({name})",
    )


# --------------------------------------------------------------------------------------------------
# numpy convenience: validate, copy in, launch, copy out.


def _validated(query, ref_maps, ref_probs, tau, mode, k):
    (q, kmap, v), as_f32, tau, _ = checked(query, ref_maps, ref_probs, tau=tau, mode=mode, k=k)
    # float16 kernel only when everything is float16 already (no rounding of float32 inputs)
    half = q.dtype == np.float16 and kmap.dtype == np.float16 and v.dtype == np.float16
    arrays = (q, kmap, v) if half else as_f32
    dtype = np.float16 if half else np.float32
    return (*(np.ascontiguousarray(a, dtype) for a in arrays), tau)


def lookup_numpy(query, ref_maps, ref_probs, *, tau: float = 0.01, mode: str = "soft", k: int | None = None):
    """Run the kernel on numpy arrays: returns P (N, C, Hq, Wq) float32 and labels (N, Hq, Wq) int32."""
    q, kmap, v, tau = _validated(query, ref_maps, ref_probs, tau, mode, k)
    n, r, c, hk, wk = v.shape
    hq, wq = q.shape[2:]
    kernel_name(mode, q.dtype, c)  # fail on C > 64 before allocating anything
    driver, _ = cuda_driver.context()
    p = np.empty((n, c, hq, wq), np.float32)
    labels = np.empty((n, hq, wq), np.int32)
    arrays = (q, kmap, v, p, labels)
    ptrs = []
    try:
        for a in arrays:
            ptrs.append(cuda_driver.check(driver.cuMemAlloc(a.nbytes), "cuMemAlloc"))
        for a, d in zip(arrays[:3], ptrs[:3]):
            cuda_driver.check(driver.cuMemcpyHtoD(d, a.ctypes.data, a.nbytes), "cuMemcpyHtoD")
        lookup_device(*(int(d) for d in ptrs), n=n, hq=hq, wq=wq, r=r, hk=hk, wk=wk, c=c, dtype=q.dtype,
                      tau=tau, mode=mode, k=k, stream=0)
        for a, d in zip(arrays[3:], ptrs[3:]):
            cuda_driver.check(driver.cuMemcpyDtoH(a.ctypes.data, d, a.nbytes), "cuMemcpyDtoH")  # waits for the kernel
    finally:
        for d in ptrs:
            driver.cuMemFree(d)
    return p, labels
