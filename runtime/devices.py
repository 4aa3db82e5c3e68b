"""Where inference runs: the device values every runtime command and backend takes."""

from __future__ import annotations

import os

from runtime.errors import CoordGANError

DEVICES = ("auto", "cpu", "cuda")  # auto: a GPU where one answers, else the CPU


def cpu_threads() -> int:
    """CPU threads the runtime uses unless told (the lookup, ONNX Runtime): the CPUs this process may run
    on, capped by OMP_NUM_THREADS when that is set (the variable that also caps BLAS)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:
        n = min(n, int(omp))
    return max(1, n)


def check_device(device: str, name: str = "--device") -> str:
    if device not in DEVICES:
        raise CoordGANError(f"{name} must be auto, cpu or cuda, not {device!r}.")
    return device
