"""Runners for the torch-free backends: ONNX Runtime (CPU / CUDA), OpenVINO (CPU), TensorRT plans, Triton.

Every runner feeds numpy arrays through `runtime.backends` and gets numpy arrays back, so a timed
call includes the host<->device copies a deployment pays. The lookup runs through
`runtime.lookup`: numpy (dense / sparse) beside CPU backends, the fused CUDA kernel beside GPU ones.
The pipeline runs what `coordgan propagate` runs on a batch: the video decoded, the same
CorrespondenceModel and propagation step (runtime.propagation.sequence.propagate_batch), PNGs and
the resume state written. A backend that cannot run here raises `Skip` with one sentence saying why.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.bench.timing import Runner
from runtime.bench.workload import PipelineScratch, Workload
from runtime.errors import CoordGANError

RUNTIME_BACKENDS = ("ort-cpu", "ort-cuda", "openvino", "trt", "triton")


def gpu_lookup_name(impl: str) -> str:
    return {"cuda": "fused CUDA kernel", "cuda-sparse": "sparse CUDA kernels"}[impl]


class Skip(Exception):
    """A backend that cannot run on this machine / with these options; the message says why."""


class BackendRunner(Runner):
    """encoder / generator / lookup / pipeline through one runtime backend (None for lookup)."""

    def __init__(self, name: str, workload: Workload, model=None, *, lookup_device: str = "cpu"):
        self.backend = name
        self.workload = workload
        self.model = model
        # the lookup beside a GPU backend is a kernel (--gpu-lookup); beside a CPU one the --lookup-method path
        self.lookup_impl = workload.gpu_lookup if lookup_device == "cuda" else workload.cpu_lookup_impl
        self.device = model.device if model is not None else lookup_device
        self.uses_gpu = "cuda" in self.device or lookup_device == "cuda" or name == "trt"
        if workload.target == "lookup" or workload.target == "pipeline":
            how = gpu_lookup_name(workload.gpu_lookup) if lookup_device == "cuda" else f"numpy {workload.lookup_method}"
            self.detail = f"lookup: {how}"
        self._call = None
        self._scratch = PipelineScratch()  # pipeline: the video and the masks, removed on close()

    def _lookup(self, q, k, v):
        from runtime.lookup import lookup

        return lookup(q, k, v, tau=self.workload.tau, mode="soft", impl=self.lookup_impl)

    def _image_feed(self, frames_or_image):
        """The encoder's feed from float NCHW images: uint8 NHWC if the graph takes frames."""
        spec = self.model.inputs[0]
        x = frames_or_image
        if spec.dtype == np.uint8:
            x = np.clip(np.rint((x.transpose(0, 2, 3, 1) + 1) * 127.5), 0, 255).astype(np.uint8)
        return {spec.name: np.ascontiguousarray(x)}

    def prepare(self, batch: int) -> None:
        wl, model = self.workload, self.model
        if wl.target == "encoder":
            feeds = self._image_feed(wl.image(batch))
            self._call = lambda: model.run(feeds)
        elif wl.target == "generator":
            w_struct, w_texture = wl.codes(batch)
            names = [s.name for s in model.inputs]
            if set(names) == {"w_struct", "w_texture"}:
                feeds = {"w_struct": w_struct, "w_texture": w_texture}
            elif set(names) == {"z_struct", "z_texture"}:
                feeds = {"z_struct": w_struct, "z_texture": w_texture[:, 0]}
            else:
                raise CoordGANError(f"{model.describe()} is not a CoordGAN generator.")
            self._call = lambda: model.run(feeds)
        elif wl.target == "lookup":
            q, k, v = wl.lookup_inputs(batch)
            self._call = lambda: self._lookup(q, k, v)
        else:
            self._call = self._pipeline_call(batch)

    def _pipeline_call(self, batch: int):
        from runtime.lookup.spec import LookupParams
        from runtime.propagation.memory import STATE_FILE
        from runtime.propagation.model import CorrespondenceModel
        from runtime.propagation.sequence import propagate_batch
        from runtime.propagation.step import Propagator

        wl = self.workload
        scratch = self._scratch.path
        video = wl.video(batch, scratch)
        model = CorrespondenceModel(self.model, batch=batch)
        # the memory holds the workload's R reference frames and keeps them (no recent window), so
        # every call looks up the same memory
        step = Propagator(LookupParams(memory=0, tau=wl.tau), impl=self.lookup_impl, labels=range(wl.classes))
        k, v = wl.reference_memory()
        for r in range(wl.refs):
            step.add_reference(f"ref{r}", k[0, r], v[0, r])
        out = self._scratch.writer(step.labels.values)

        def call():
            frames = wl.decode(video)
            propagate_batch(model, step, frames, frames[0][2].shape[:2], out)
            out.flush()  # as propagate, every batch: the masks on disk, then the state
            step.save(scratch / STATE_FILE, next_frame=len(frames), meta={})

        return call

    def __call__(self):
        return self._call()

    def close(self):
        try:
            self._scratch.close()
        finally:  # (a write error still lets the model go)
            if self.model is not None:
                self.model.close()


def _model_file(directory, name: str, suffix: str, option: str):
    if directory is None:
        raise Skip(f"needs {option} DIR holding {name}{suffix}")
    path = Path(directory) / f"{name}{suffix}"
    if not path.is_file():
        raise Skip(f"{path} does not exist")
    return path


def _onnx_file(onnx_dir, model_name: str):
    directory = onnx_dir(model_name) if callable(onnx_dir) else onnx_dir
    return _model_file(directory, model_name, ".onnx", "--onnx-dir")


def open_runtime_runner(backend: str, workload: Workload, *, onnx_dir=None, trt_dir=None, url=None,
                        threads: int | None = None, precision: str = "fp32") -> BackendRunner:
    """A runner for one runtime backend, or Skip(reason). `onnx_dir` is a callable giving the export
    directory for a model name (exports lazily), or a path."""
    target = workload.target
    model_name = {"encoder": "encoder", "pipeline": "encoder", "generator": "generator"}.get(target)
    if precision == "bf16":
        raise Skip("bf16 is a PyTorch precision here: ONNX exports are fp32 or fp16")
    try:
        if backend in ("ort-cpu", "ort-cuda"):
            device = backend.split("-")[1]
            if device == "cuda":
                _require_ort_cuda()
            if model_name is None:  # lookup: no ONNX model, the runtime lookup beside this provider
                if device == "cuda":
                    _require_cuda_lookup()
                return BackendRunner(backend, workload, None, lookup_device=device)
            from runtime.backends.ort_backend import OrtBackend

            model = OrtBackend(_onnx_file(onnx_dir, model_name), device=device, threads=threads)
            lookup_device = "cpu"
            if target == "pipeline" and device == "cuda":
                _require_cuda_lookup()
                lookup_device = "cuda"
            return BackendRunner(backend, workload, model, lookup_device=lookup_device)
        if backend == "openvino":  # the same .onnx file, compiled by OpenVINO for the CPU
            if model_name is None:
                raise Skip("the lookup runs beside a backend, not inside one; time it with ort-cpu")
            from runtime.backends.openvino_backend import OpenVINOBackend

            return BackendRunner(backend, workload, OpenVINOBackend(_onnx_file(onnx_dir, model_name), threads=threads))
        if backend == "trt":
            if model_name is None:
                raise Skip("the lookup has no engine of its own (it is a plugin inside engines); "
                           "time the fused kernel with ort-cuda")
            path = _model_file(trt_dir, model_name, ".plan", "--trt-dir")
            from runtime.backends.trt_backend import TensorRTBackend

            model = TensorRTBackend(path)
            lookup_device = "cpu"
            if target == "pipeline":
                _require_cuda_lookup()
                lookup_device = "cuda"
            return BackendRunner(backend, workload, model, lookup_device=lookup_device)
        if backend == "triton":
            if url is None:
                raise Skip("needs --url triton://host:port")
            if model_name is None:
                raise Skip("the lookup is not served as a model of its own; time it with ort-cpu / ort-cuda")
            from runtime.backends.triton_backend import TritonBackend

            # triton://host:port serves the target's model under its own name
            return BackendRunner(backend, workload, TritonBackend(url, model=model_name), lookup_device="cpu")
    except CoordGANError as exc:
        raise Skip(str(exc).rstrip(".")) from None
    raise Skip(f"unknown backend {backend!r}")


def _require_ort_cuda():
    try:
        import onnxruntime as ort
    except ImportError:
        raise Skip("onnxruntime is not installed") from None
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise Skip("this ONNX Runtime build has no CUDA execution provider (install onnxruntime-gpu)")
    from runtime.backends.ort_backend import _gpu_driver_present

    if not _gpu_driver_present():
        raise Skip("no NVIDIA GPU driver on this machine")


def _require_cuda_lookup():
    from runtime.lookup import cuda_available

    if not cuda_available():
        raise Skip("the CUDA lookup kernel needs cuda-python and an NVIDIA GPU, and none answered")
