"""Runners that need torch: eager PyTorch, torch.compile, and the published evaluation path.

Inputs are the same seeded numpy arrays the runtime runners get (runtime.bench.workload), made
into tensors on the device outside the timed region. On a GPU a call is timed with CUDA events and
peak memory is torch.cuda.max_memory_allocated; on the CPU, wall clock.

`published` (pipeline only) is the path of NVlabs/CoordGAN's evaluation: encoder, the FULL
generator forward (synthesis included, the correspondence map is a by-product of it), the one-shot
norm / softmax / einsum lookup (`coordgan.correspondence.lookup_published`) one frame at a time as
the evaluation loops over frames, eager PyTorch.
"""

from __future__ import annotations

import contextlib

import numpy as np

from runtime.bench.runners import Skip
from runtime.bench.timing import Runner
from runtime.bench.workload import PipelineScratch, Workload

TORCH_BACKENDS = ("torch", "torch-compile", "published")


class _CudaEventTimer:
    def __init__(self, torch):
        self.torch = torch
        self.ms = None

    def __enter__(self):
        self.start = self.torch.cuda.Event(enable_timing=True)
        self.end = self.torch.cuda.Event(enable_timing=True)
        self.start.record()
        return self

    def __exit__(self, *exc):
        self.end.record()
        self.end.synchronize()
        self.ms = self.start.elapsed_time(self.end)


class TorchRunner(Runner):
    def __init__(self, backend: str, workload: Workload, checkpoint, *, device: str = "auto",
                 precision: str = "fp32"):
        import torch

        self.torch = torch
        self.backend = backend
        self.workload = workload
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        self.uses_gpu = device == "cuda"
        if precision in ("fp16", "bf16") and device != "cuda":
            raise Skip(f"{precision} with PyTorch needs a CUDA GPU (CPU half-precision convolutions are not a "
                       "deployment path)")
        if backend == "published" and workload.target != "pipeline":
            raise Skip("the published evaluation path is a pipeline (frame -> mask) baseline only")
        self.dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
        self.encoder = self.generator = None
        if workload.target != "lookup":
            self.generator = checkpoint.generator.to(device=device, dtype=self.dtype).eval()
            if workload.target in ("encoder", "pipeline"):
                if "e" not in checkpoint.networks:
                    raise Skip(f"checkpoint {checkpoint.path} has no encoder")
                self.encoder = checkpoint.encoder.to(device=device, dtype=self.dtype).eval()
        self.detail = {"torch": "eager", "torch-compile": "torch.compile (default mode)",
                       "published": "encoder + full generator + norm/softmax/einsum lookup per frame"}[backend]
        # eager torch on a GPU looks up with the fused kernel (what a deployment would run; it takes
        # C <= 64); compile keeps the torch formulation, which is what it can trace
        from runtime.bench.runners import gpu_lookup_name
        from runtime.lookup import cuda_available, spec

        self.fused_lookup = (self.uses_gpu and backend == "torch" and cuda_available()
                             and spec.kernel_limit(workload.classes, "soft", None) is None)
        if workload.target in ("lookup", "pipeline") and backend != "published":
            self.detail += (f", {gpu_lookup_name(workload.gpu_lookup)}" if self.fused_lookup
                            else ", chunked reference lookup")
        self._call = None
        self._scratch = PipelineScratch()  # pipeline: the video and the masks, removed on close()

    # -- the computations -------------------------------------------------------------------------
    def _fn(self):
        torch, wl = self.torch, self.workload
        import torch.nn.functional as F

        from coordgan.correspondence import lookup, lookup_published

        impl = wl.gpu_lookup if self.fused_lookup else "reference"

        if wl.target == "encoder":
            def fn(image):
                w_struct, w_texture = self.encoder(image)
                return self.generator.warp(w_struct), w_struct, w_texture
        elif wl.target == "generator":
            def fn(w_struct, w_texture):
                return self.generator(w_texture, w_struct, input_is_w=True, noise_mode="const")[0]
        elif wl.target == "lookup":
            def fn(q, k, v):
                return lookup(q, k, v, tau=wl.tau, mode="soft", impl=impl)[1]
        else:
            size = wl.size
            published = self.backend == "published"

            def fn(frames, k, v):
                hw = tuple(frames.shape[1:3])
                x = frames.permute(0, 3, 1, 2).to(self.dtype)
                if tuple(x.shape[2:]) != (size, size):
                    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
                image = x * (2 / 255) - 1
                w_struct, w_texture = self.encoder(image)
                if published:
                    _, corr = self.generator(w_texture, w_struct, input_is_w=True, noise_mode="const")
                    corr = corr.float()
                    probs = torch.cat([lookup_published(corr[i:i + 1], k[i:i + 1], v[i:i + 1], tau=wl.tau)[0]
                                       for i in range(corr.shape[0])])
                else:
                    corr = self.generator.warp(w_struct).float()
                    probs = lookup(corr, k, v, tau=wl.tau, mode="soft", impl=impl)[0]
                if tuple(probs.shape[2:]) != tuple(hw):
                    probs = F.interpolate(probs, size=hw, mode="bilinear", align_corners=False)
                return probs.argmax(dim=1)
        if self.backend == "torch-compile":
            return torch.compile(fn)
        return fn

    def prepare(self, batch: int) -> None:
        torch, wl = self.torch, self.workload

        def t(a, dtype=None):
            return torch.from_numpy(np.ascontiguousarray(a)).to(self.device, dtype=dtype)

        if wl.target == "encoder":
            args = (t(wl.image(batch), self.dtype),)
        elif wl.target == "generator":
            w_struct, w_texture = wl.codes(batch)
            args = (t(w_struct, self.dtype), t(w_texture, self.dtype))
        elif wl.target == "lookup":
            args = tuple(t(a) for a in wl.lookup_inputs(batch))
        else:
            k, v = wl.reference_memory()
            args = (t(np.repeat(k, batch, axis=0)), t(np.repeat(v, batch, axis=0)))
        fn = self._fn()
        sync = torch.cuda.synchronize if self.uses_gpu else (lambda: None)

        if wl.target == "pipeline":  # frames decoded from the video, masks written as PNGs, as propagate
            video = wl.video(batch, self._scratch.path)
            # PNGs on every core, as propagate writes them: at GPU rates one thread would set the pace
            out = self._scratch.writer(np.arange(wl.classes))

            def call():
                decoded = wl.decode(video)
                frames = t(np.stack([f for _, _, f in decoded]))
                with torch.inference_mode():
                    labels = fn(frames, *args).to(torch.uint8).cpu().numpy()
                for (_, name, frame), mask in zip(decoded, labels):
                    out.write(name, mask, None, frame)
                out.flush()
        else:
            def call():
                with torch.inference_mode():
                    out = fn(*args)
                sync()
                return out

        self._call = call
        if self.backend == "torch-compile":
            call()  # compile outside the timed loop, whatever --warmup says

    def __call__(self):
        return self._call()

    def timer(self):
        if not self.uses_gpu:
            return None
        return lambda: _CudaEventTimer(self.torch)

    def reset_gpu_peak(self):
        if self.uses_gpu:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()

    def gpu_peak(self):
        if not self.uses_gpu:
            return None
        return int(self.torch.cuda.max_memory_allocated())

    def close(self):
        self._call = None
        try:
            self._scratch.close()
        finally:  # (a write error still lets the GPU memory go)
            if self.uses_gpu:
                self.torch.cuda.empty_cache()


def open_torch_runner(backend: str, workload: Workload, source, *, precision: str = "fp32") -> TorchRunner:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise Skip("PyTorch is not installed") from None
    if backend == "published" and workload.target != "pipeline":
        raise Skip("the published evaluation path is a pipeline (frame -> mask) baseline only")
    if backend == "torch-compile":
        import shutil

        import torch

        if not torch.cuda.is_available() and not (shutil.which("cc") or shutil.which("gcc")):
            raise Skip("torch.compile on the CPU needs a C compiler, and none is on PATH")
    checkpoint = source.checkpoint() if workload.target != "lookup" else None
    return TorchRunner(backend, workload, checkpoint, precision=precision)


@contextlib.contextmanager
def torch_threads(threads: int | None):
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
