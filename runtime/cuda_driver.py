"""cuda-python plumbing shared by the GPU lookup and the TensorRT backend (no torch, no pycuda).

Both cuda-python layouts work: `cuda.bindings` (>= 12.6) and the older `from cuda import cuda`.
Every failure a user can cause (no package, no driver, no GPU) is a one-sentence CoordGANError.
"""

from __future__ import annotations

from runtime.errors import CoordGANError


def bindings():
    """(driver, nvrtc) modules of whichever cuda-python layout is installed."""
    try:
        from cuda.bindings import driver, nvrtc
    except ImportError:
        try:
            from cuda import cuda as driver  # cuda-python < 12.6
            from cuda import nvrtc
        except ImportError:
            raise CoordGANError(
                "GPU work outside PyTorch needs cuda-python (pip install cuda-python), which is not installed."
            ) from None
    return driver, nvrtc


def check(result, what: str):
    """Unpack a cuda-python (status, *values) tuple, raising CoordGANError on failure."""
    status, *values = result if isinstance(result, tuple) else (result,)
    if int(status) != 0:
        name = getattr(status, "name", str(status))
        raise CoordGANError(f"CUDA call {what} failed with {name}.")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def context(device: int = 0):
    """Make a context current (the caller's if one is, else the device's primary context, the one
    the CUDA runtime, torch and CuPy use) and return (driver, context handle)."""
    driver, _ = bindings()
    try:
        check(driver.cuInit(0), "cuInit")
        current = check(driver.cuCtxGetCurrent(), "cuCtxGetCurrent")
        if current is not None and int(current) != 0:
            return driver, current
        count = check(driver.cuDeviceGetCount(), "cuDeviceGetCount")
        if count < 1:
            raise CoordGANError("This needs an NVIDIA GPU, and no CUDA device is visible.")
        dev = check(driver.cuDeviceGet(device), "cuDeviceGet")
        ctx = check(driver.cuDevicePrimaryCtxRetain(dev), "cuDevicePrimaryCtxRetain")
        check(driver.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
        return driver, ctx
    except CoordGANError:
        raise
    except Exception as exc:  # e.g. cuda.pathfinder: no NVIDIA driver library on this machine
        raise CoordGANError(
            f"This needs an NVIDIA GPU and driver, and none was found ({type(exc).__name__})."
        ) from None


def available() -> bool:
    """True when cuda-python imports and a CUDA device answers (never raises)."""
    try:
        context()
    except CoordGANError:
        return False
    return True
