"""The driver of `coordgan bench`: open each backend, sweep the batch sizes, collect result rows.

A backend that cannot run (no GPU, no TensorRT, no server, no plans) becomes a "skipped" row with
its reason; one that fails while running becomes a "failed" row; neither stops the other backends.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from pathlib import Path

from runtime.bench.report import add_published_ratios
from runtime.bench.runners import RUNTIME_BACKENDS, Skip, open_runtime_runner
from runtime.bench.timing import measure
from runtime.bench.workload import GPU_LOOKUPS, Workload
from runtime.errors import CoordGANError, first_line

ALL_BACKENDS = ("published", "torch", "torch-compile", "ort-cpu", "ort-cuda", "openvino", "trt", "triton")
PRECISIONS = ("fp32", "fp16", "bf16")  # bf16: torch on CUDA only


@dataclasses.dataclass
class BenchOptions:
    target: str
    backends: tuple[str, ...] = ()  # empty: all (published only for the pipeline)
    batches: tuple[int, ...] = (1,)
    precision: str = "fp32"
    warmup: int = 3
    iters: int = 20
    max_time_s: float | None = None
    threads: int | None = None
    onnx_dir: Path | None = None
    trt_dir: Path | None = None
    url: str | None = None
    lookup_method: str = "auto"
    gpu_lookup: str = "cuda"
    refs: int = 1
    classes: int = 8
    tau: float = 0.01
    frame_size: tuple[int, int] | None = None
    seed: int = 0

    def resolved_backends(self) -> tuple[str, ...]:
        if not self.backends:
            return tuple(b for b in ALL_BACKENDS if b != "published" or self.target == "pipeline")
        unknown = [b for b in self.backends if b not in ALL_BACKENDS]
        if unknown:
            raise CoordGANError(f"Unknown backend {unknown[0]!r}; choose from: {', '.join(ALL_BACKENDS)}.")
        return tuple(dict.fromkeys(self.backends))

    def validate(self):
        if self.precision not in PRECISIONS:
            raise CoordGANError(f"--precision must be fp32, fp16 or bf16, not {self.precision!r}.")
        if self.gpu_lookup not in GPU_LOOKUPS:
            raise CoordGANError(f"--gpu-lookup must be {' or '.join(GPU_LOOKUPS)}, not {self.gpu_lookup!r}.")
        if not self.batches or min(self.batches) < 1:
            raise CoordGANError("--batch must be positive integers separated by commas.")
        if self.iters < 1 or self.warmup < 0:
            raise CoordGANError("--iters must be at least 1 and --warmup at least 0.")
        if self.max_time_s is not None and not self.max_time_s > 0:
            raise CoordGANError(f"--max-time must be greater than 0 seconds, got {self.max_time_s:g}.")
        if self.threads is not None and self.threads < 1:
            raise CoordGANError(f"--threads must be at least 1, got {self.threads}.")
        for flag, folder in (("--onnx-dir", self.onnx_dir), ("--trt-dir", self.trt_dir)):
            if folder is not None and not Path(folder).is_dir():  # given by name: a typo is an error, not a skip
                raise CoordGANError(f"{flag} {folder} is not a folder.")
        self.resolved_backends()


def machine_info(threads) -> dict:
    import numpy as np

    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "threads": threads, "numpy": np.__version__}
    for mod in ("torch", "onnxruntime", "tensorrt"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:
            info[mod] = None
    try:
        import torch

        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:
        info["gpu"] = None
    if hasattr(os, "getloadavg"):
        info["load_average"] = os.getloadavg()[0]
    return info


def run_bench(options: BenchOptions, source, *, progress=None, on_row=None) -> tuple[dict, list[dict]]:
    """Run the benchmark; returns (meta, rows). `progress(message)` narrates, `on_row(row)` sees each row."""
    from coordgan.bench.torch_runners import TORCH_BACKENDS, open_torch_runner, torch_threads

    options.validate()
    say = progress or (lambda message: None)
    cfg = source.checkpoint().config if options.target != "lookup" or source.preset is None else source.config
    workload = Workload(options.target, size=cfg.base_size, style_dim=cfg.style_dim, n_latent=cfg.n_latent,
                        frame_hw=options.frame_size, refs=options.refs, classes=options.classes, tau=options.tau,
                        lookup_method=options.lookup_method, gpu_lookup=options.gpu_lookup, seed=options.seed)
    fp16 = options.precision == "fp16"
    rows: list[dict] = []

    def add(row):
        rows.append(row)
        if on_row:
            on_row(row)

    def onnx_dir(model):
        if options.onnx_dir is not None:
            return options.onnx_dir
        try:
            return source.onnx_dir(model, fp16=fp16)
        except CoordGANError as exc:
            raise Skip(f"ONNX export failed: {str(exc).rstrip('.')}") from None

    with torch_threads(options.threads):
        for backend in options.resolved_backends():
            base = {"target": options.target, "backend": backend, "precision": options.precision}
            say(f"{backend}: opening")
            try:
                if backend in TORCH_BACKENDS:
                    runner = open_torch_runner(backend, workload, source, precision=options.precision)
                elif backend in RUNTIME_BACKENDS:
                    runner = open_runtime_runner(backend, workload, onnx_dir=onnx_dir, trt_dir=options.trt_dir,
                                                 url=options.url, threads=options.threads,
                                                 precision=options.precision)
                else:  # pragma: no cover - validate() rejects it
                    raise Skip(f"unknown backend {backend!r}")
            except Skip as exc:
                add({**base, "batch": None, "status": "skipped", "reason": str(exc)})
                continue
            except Exception as exc:  # a backend that breaks must not take the others down
                add({**base, "batch": None, "status": "failed", "reason": _reason(exc)})
                continue
            try:
                for batch in options.batches:
                    say(f"{backend}: batch {batch}")
                    row = {**base, "batch": batch, "device": runner.device, "detail": runner.detail}
                    try:
                        m = measure(runner, batch, warmup=options.warmup, iters=options.iters,
                                    max_time_s=options.max_time_s,
                                    on_iter=lambda kind, b=batch, n=backend: say(f"{n}: batch {b} ({kind})"))
                    except Skip as exc:
                        add({**row, "status": "skipped", "reason": str(exc)})
                        break
                    except Exception as exc:
                        add({**row, "status": "failed", "reason": _reason(exc)})
                        if not isinstance(exc, CoordGANError):
                            break  # e.g. out of memory: larger batches will not do better
                        continue
                    add({**row, "status": "ok", **m.summary(batch)})
            finally:
                runner.close()
    add_published_ratios(rows)
    meta = {"target": options.target, "workload": workload.describe(), "source": source.describe(),
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(options).items()},
            "machine": machine_info(options.threads), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return meta, rows


def _reason(exc: BaseException) -> str:
    """One line for a failed row: a user error's sentence, else the exception's type and first line."""
    return first_line(exc) if isinstance(exc, CoordGANError) else f"{type(exc).__name__}: {first_line(exc)}"

