"""Inference backends behind one interface; `open_backend` picks one from the artifact.

    .onnx                      -> onnxruntime (CPU, or the CUDA provider where it loads), or openvino (CPU)
    .plan / .engine            -> tensorrt
    triton://host:port/model   -> triton (gRPC; triton+http:// for HTTP)

`backend=` overrides the choice; "auto" on an .onnx file is the fastest CPU backend installed
(runtime.backends.auto: a short timed trial of onnxruntime and openvino), or ONNX Runtime's CUDA provider. Each backend imports its own package on first use, so a
missing package is a one-sentence error only when that backend is asked for.
"""

from __future__ import annotations

from pathlib import Path

from runtime.backends.base import Backend, TensorSpec
from runtime.errors import CoordGANError

__all__ = ["Backend", "TensorSpec", "BACKENDS", "open_backend", "backend_for"]

BACKENDS = ("auto", "onnxruntime", "openvino", "tensorrt", "triton")


def backend_for(artifact: str) -> str:
    """The backend an artifact implies."""
    from runtime.backends.triton_backend import is_address

    text = str(artifact)
    if is_address(text):
        return "triton"
    suffix = Path(text).suffix.lower()
    if suffix == ".onnx":
        return "onnxruntime"
    if suffix in (".plan", ".engine"):
        return "tensorrt"
    raise CoordGANError(f"Cannot tell the backend of {text!r}: expected a .onnx file, a .plan TensorRT "
                        "engine or a triton://host:port/model address (or pass --backend).")


def open_backend(artifact, backend: str | None = None, **options) -> Backend:
    kind = backend or backend_for(artifact)
    if kind == "auto":
        if backend_for(artifact) != "onnxruntime":  # an engine or a served model: one backend runs it
            return open_backend(artifact, **options)
        from runtime.backends.auto import open_auto

        return open_auto(artifact, **options)
    if kind == "onnxruntime":
        from runtime.backends.ort_backend import OrtBackend

        return OrtBackend(artifact, **options)
    if kind == "openvino":
        from runtime.backends.openvino_backend import OpenVINOBackend

        return OpenVINOBackend(artifact, **options)
    if kind == "tensorrt":
        from runtime.backends.trt_backend import TensorRTBackend

        return TensorRTBackend(artifact, **options)
    if kind == "triton":
        from runtime.backends.triton_backend import TritonBackend

        return TritonBackend(str(artifact), **options)
    raise CoordGANError(f"Unknown backend {kind!r}; choose one of: {', '.join(BACKENDS)}.")
