"""ONNX Runtime backend: CPU everywhere, the CUDA provider where a GPU and its libraries load.

Providers are chosen from what actually loads, not from what the wheel lists: a session is made
with CUDA first and ORT's own fallback warnings muted, then asked which provider it got. Asking
for `device="cuda"` where CUDA did not load is an error in one sentence; `auto` quietly uses CPU.
"""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

import numpy as np

from runtime.backends.base import Backend, TensorSpec
from runtime.devices import check_device, cpu_threads
from runtime.errors import CoordGANError

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}


_STATUS = re.compile(r"\[ONNXRuntimeError\] : \d+ : \w+ : ")  # "[ONNXRuntimeError] : 1 : FAIL : "
_LOADING = re.compile(r"Load model from .*? failed:")  # the caller's sentence names the file
_FRAME = re.compile(r"\S+\.(?:cc|cpp|cu|h|hpp):\d+ ")  # "/onnxruntime_src/.../model.cc:256 " + C++ signature
_IR_VERSION = re.compile(r"max supported IR version: (\d+)")


def ort_reason(exc: BaseException) -> str:
    """ONNX Runtime's error as a clause for one sentence: its status prefix, the file it names and its C++
    source frames (a location and a whole signature each, often 200 characters before the cause) dropped,
    the cause kept whole; for a model newer than this ONNX Runtime reads, what to do about it."""
    text = _LOADING.sub("", _STATUS.sub("", str(exc)))
    while frame := _FRAME.search(text):
        text = text[:frame.start()] + text[_signature_end(text, frame.end()):]
    text = " ".join(text.split()).rstrip(".") or type(exc).__name__
    newest = _IR_VERSION.search(text)
    if newest:  # the newer `onnx` package writes a newer IR by default (onnx.save of helper.make_model)
        text += (f"; re-save the model at IR version {newest[1]} (model.ir_version = {newest[1]}, then onnx.save) "
                 "or install a newer onnxruntime")
    return text


def _signature_end(text: str, start: int) -> int:
    """Where the C++ signature that begins at `start` ends: after its balanced argument list (and a const)."""
    depth, i = 0, text.find("(", start)
    if i < 0:
        return start
    for i in range(i, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            break
    end = i + 1
    return end + len(" const") if text.startswith(" const", end) else end


def _import_ort():
    try:
        import onnxruntime
    except ImportError:
        raise CoordGANError(
            "ONNX Runtime is not installed; install it with: pip install 'coordgan-deploy[runtime]'.") from None
    return onnxruntime


def _gpu_driver_present() -> bool:
    """An NVIDIA driver is loadable: only then is the CUDA provider worth a try."""
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def may_get_cuda(device: str) -> bool:
    """Whether a session for `device` tries the CUDA provider: asked for (or auto), in this build, and a
    driver to run it. False means the session is sure to run on the CPU."""
    return (device in ("auto", "cuda") and "CUDAExecutionProvider" in _import_ort().get_available_providers()
            and _gpu_driver_present())


def _specs(nodes) -> list[TensorSpec]:
    return [TensorSpec(n.name, tuple(d if isinstance(d, int) else None for d in n.shape),
                       np.dtype(_ORT_TYPES.get(n.type, np.float32))) for n in nodes]


class OrtBackend(Backend):
    name = "onnxruntime"

    def __init__(self, path, device: str = "auto", threads: int | None = None,
                 optimization: str = "all", profile: bool = False):
        ort = _import_ort()
        path = Path(path)
        if not path.is_file():
            raise CoordGANError(f"ONNX model {path} does not exist.")
        check_device(device, "device")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # errors only: no provider-fallback noise
        levels = {"none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                  "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                  "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
        if optimization not in levels:
            raise CoordGANError(f"optimization must be one of {', '.join(levels)}, got {optimization!r}.")
        opts.graph_optimization_level = levels[optimization]
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # As many threads as this process may use (ORT's own default counts physical cores), and no
        # spinning between runs: the encoder runs interleaved with the lookup, decoding and PNG writing,
        # and spinning threads would hold the cores those need.
        opts.intra_op_num_threads = threads or cpu_threads()
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.enable_profiling = profile
        if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise CoordGANError("The CUDA execution provider is not in this ONNX Runtime build; "
                                "install onnxruntime-gpu on a machine with an NVIDIA GPU.")
        want_cuda = may_get_cuda(device)
        providers = (["CUDAExecutionProvider"] if want_cuda else []) + ["CPUExecutionProvider"]
        # A CUDA provider that cannot load logs errors through ORT's default logger; we check the
        # outcome ourselves below, so mute that logger while the session is made.
        ort.set_default_logger_severity(4 if want_cuda else 3)
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as exc:  # ORT raises its own exception types for bad files
            raise CoordGANError(f"ONNX Runtime cannot load {path}: {ort_reason(exc)}.") from None
        finally:
            ort.set_default_logger_severity(3)
        got_cuda = self.session.get_providers()[0] == "CUDAExecutionProvider"
        if device == "cuda" and not got_cuda:
            raise CoordGANError("The CUDA execution provider did not load (no GPU, or CUDA/cuDNN libraries "
                                "missing); use device 'cpu' or fix the CUDA installation.")
        self.device = "cuda" if got_cuda else "cpu"
        self.inputs = _specs(self.session.get_inputs())
        self.outputs = _specs(self.session.get_outputs())
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    def _run(self, feeds):
        names = [spec.name for spec in self.outputs]
        if self.device == "cuda":
            # IO binding: outputs are allocated on the device by ORT and copied back once.
            binding = self.session.io_binding()
            for key, value in feeds.items():
                binding.bind_cpu_input(key, value)
            for key in names:
                binding.bind_output(key, "cuda")
            self.session.run_with_iobinding(binding)
            return dict(zip(names, binding.copy_outputs_to_cpu()))
        return dict(zip(names, self.session.run(names, feeds)))

    def close(self):
        self.session = None
