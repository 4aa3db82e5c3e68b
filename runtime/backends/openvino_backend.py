"""OpenVINO backend: the same encoder.onnx, compiled by OpenVINO for the CPU (no separate export step).

The compiled model is cached by OpenVINO (CACHE_DIR) under runtime.fileio.cache_dir("openvino", <the
file's SHA-256>): OpenVINO keys a model read from a path by the path alone, so an export rewritten in
place would otherwise be served from the stale blob. Threads as the rest of the runtime
(runtime.devices.cpu_threads), fp32 inference precision unless asked otherwise (OpenVINO's CPU
default is bf16 or fp16 where the CPU has them, which would change the maps).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.backends.base import Backend, TensorSpec
from runtime.devices import check_device, cpu_threads
from runtime.errors import CoordGANError
from runtime.fileio import cache_dir, sha256_file

PRECISIONS = ("f32", "bf16", "f16")


def import_openvino():
    try:
        import openvino
    except ImportError:
        raise CoordGANError(
            "OpenVINO is not installed; install it with: pip install 'coordgan-deploy[openvino]'.") from None
    return openvino


def ov_reason(exc: BaseException) -> str:
    """OpenVINO's error as a clause: its "Exception from <source file>:<line>:" frames and its list of
    frontends dropped, the cause kept."""
    lines = [line.strip() for line in str(exc).splitlines()
             if line.strip() and not line.startswith("Exception from ")]
    text = " ".join(lines).split(" Available frontends:")[0]
    return text.rstrip(". ") or type(exc).__name__


def _specs(ports) -> list[TensorSpec]:
    specs = []
    for port in ports:
        shape = tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
        specs.append(TensorSpec(port.get_any_name(), shape, np.dtype(port.get_element_type().to_dtype())))
    return specs


class OpenVINOBackend(Backend):
    name = "openvino"

    def __init__(self, path, device: str = "cpu", threads: int | None = None, precision: str = "f32",
                 cache: bool = True):
        ov = import_openvino()
        path = Path(path)
        if not path.is_file():
            raise CoordGANError(f"ONNX model {path} does not exist.")
        if check_device(device, "device") == "cuda":
            raise CoordGANError("The OpenVINO backend runs on the CPU; use onnxruntime or tensorrt for a CUDA GPU.")
        if precision not in PRECISIONS:
            raise CoordGANError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
        self.threads = threads or cpu_threads()
        config = {"INFERENCE_NUM_THREADS": self.threads, "INFERENCE_PRECISION_HINT": precision,
                  "PERFORMANCE_HINT": "LATENCY"}  # one batch at a time, every thread on it
        if cache:
            folder = cache_dir("openvino", sha256_file(path)[:16])
            try:
                folder.mkdir(parents=True, exist_ok=True)
                config["CACHE_DIR"] = str(folder)
            except OSError:  # a read-only cache: compile every time
                pass
        try:
            self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError with its own text for bad or unsupported files
            raise CoordGANError(f"OpenVINO cannot load {path}: {ov_reason(exc)}.") from None
        self.request = self.compiled.create_infer_request()
        self.inputs = _specs(self.compiled.inputs)
        self.outputs = _specs(self.compiled.outputs)
        self.precision = precision

    def _run(self, feeds):
        results = self.request.infer(feeds, share_inputs=True)  # outputs copied out of the request's buffers
        return {spec.name: results[port] for spec, port in zip(self.outputs, self.compiled.outputs)}

    def close(self):
        self.request = self.compiled = None
