"""TensorRT backend: a serialized engine (`.plan`), device buffers from cuda-python, one stream.

Written against the TensorRT 10 Python API (named I/O tensors, `execute_async_v3`). Inputs are
copied to device buffers that grow on demand, the engine runs asynchronously on the backend's
stream, outputs come back with one synchronisation. Dynamic batch works within the engine's
optimisation profile; a batch outside it is a one-sentence error. The engine's plugins (the
correspondence lookup) are embedded in the plan, so nothing else has to be loaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime import cuda_driver
from runtime.backends.base import Backend, TensorSpec
from runtime.errors import CoordGANError


def _import_trt():
    try:
        import tensorrt
    except ImportError:
        raise CoordGANError("TensorRT is not installed; the tensorrt backend needs the TensorRT 10 Python "
                            "package (pip install tensorrt on a machine with an NVIDIA GPU).") from None
    return tensorrt


class TensorRTBackend(Backend):
    name = "tensorrt"
    device = "cuda"

    def __init__(self, path, profile: int = 0):
        trt = _import_trt()
        path = Path(path)
        if not path.is_file():
            raise CoordGANError(f"TensorRT engine {path} does not exist.")
        self.driver, _ = cuda_driver.context()
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise CoordGANError(f"TensorRT cannot deserialize {path}: it was built by another TensorRT "
                                "version or for another GPU, or the file is damaged.")
        self.context = self.engine.create_execution_context()
        self.profile = profile
        self.stream = cuda_driver.check(self.driver.cuStreamCreate(0), "cuStreamCreate")
        self.inputs, self.outputs, self.ranges = [], [], {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            shape = tuple(None if d < 0 else d for d in self.engine.get_tensor_shape(name))
            spec = TensorSpec(name, shape, np.dtype(trt.nptype(self.engine.get_tensor_dtype(name))))
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.inputs.append(spec)
                lo, _, hi = self.engine.get_tensor_profile_shape(name, profile)
                self.ranges[name] = (tuple(lo), tuple(hi))
            else:
                self.outputs.append(spec)
        self.buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, capacity in bytes)

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, cap = self.buffers.get(name, (0, 0))
        if cap < nbytes:
            if ptr:
                self.driver.cuMemFree(ptr)
            ptr = int(cuda_driver.check(self.driver.cuMemAlloc(max(nbytes, 1)), "cuMemAlloc"))
            self.buffers[name] = (ptr, nbytes)
        return ptr

    def _run(self, feeds):
        check = cuda_driver.check
        for name, value in feeds.items():
            lo, hi = self.ranges[name]
            if any(v < a or v > b for v, a, b in zip(value.shape, lo, hi)):
                raise CoordGANError(f"Input {name} of shape {list(value.shape)} is outside the engine's "
                                    f"profile {list(lo)}..{list(hi)}; rebuild with a wider --min/--max-batch.")
            self.context.set_input_shape(name, value.shape)
            ptr = self._buffer(name, value.nbytes)
            check(self.driver.cuMemcpyHtoDAsync(ptr, value.ctypes.data, value.nbytes, self.stream), "cuMemcpyHtoDAsync")
            self.context.set_tensor_address(name, ptr)
        results = {}
        for spec in self.outputs:
            shape = tuple(self.context.get_tensor_shape(spec.name))
            out = np.empty(shape, spec.dtype)
            self.context.set_tensor_address(spec.name, self._buffer(spec.name, out.nbytes))
            results[spec.name] = out
        if not self.context.execute_async_v3(int(self.stream)):
            raise CoordGANError("TensorRT failed to run the engine (see its log above).")
        for name, out in results.items():
            check(self.driver.cuMemcpyDtoHAsync(out.ctypes.data, self.buffers[name][0], out.nbytes, self.stream),
                  "cuMemcpyDtoHAsync")
        check(self.driver.cuStreamSynchronize(self.stream), "cuStreamSynchronize")
        return results

    def close(self):
        for ptr, _ in self.buffers.values():
            self.driver.cuMemFree(ptr)
        self.buffers.clear()
        if getattr(self, "stream", None) is not None:
            self.driver.cuStreamDestroy(self.stream)
            self.stream = None
