"""Frames -> correspondence maps through an exported encoder (the lookup is the step's: step.py).

    model = open_model(resolve_encoder("export/"))               # or encoder.onnx, a .plan, triton://...
    corr = model.correspondence(frames)                          # (N, 2, S, S) float32

The encoder graph takes either float images (`image`, NCHW in [-1, 1]) or uint8 frames
(`frames`, NHWC); the model reads which from the backend's input and feeds it accordingly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.backends import Backend, backend_for, open_backend
from runtime.backends.triton_backend import is_address
from runtime.devices import check_device
from runtime.errors import CoordGANError
from runtime.fileio import sha256_file
from runtime.propagation.observer import Observer
from runtime.propagation.preprocess import check_frames, resize_frames, to_unit_range


class CorrespondenceModel:
    def __init__(self, encoder, *, backend: str | None = None, batch: int = 8, **backend_options):
        self.backend: Backend = encoder if isinstance(encoder, Backend) else open_backend(
            encoder, backend=backend, **backend_options)
        outputs = {o.name: o for o in self.backend.outputs}
        if len(self.backend.inputs) != 1 or "corr_map" not in outputs:
            raise CoordGANError(f"{encoder} is not a CoordGAN encoder: expected one image input and a "
                                f"corr_map output, found {self.backend.describe()}.")
        self.name = str(encoder) if not isinstance(encoder, Backend) else encoder.describe()
        corr = outputs["corr_map"].shape
        if len(corr) != 4 or corr[1] not in (None, 2):  # checked again on every batch where it is dynamic
            raise CoordGANError(f"{self.name} is not a CoordGAN encoder: its corr_map is {outputs['corr_map'].dims()}, "
                                "not (N, 2, H, W) correspondence maps.")
        spec = self.backend.inputs[0]
        if spec.dtype not in (np.float32, np.uint8):
            raise CoordGANError(f"{self.name} is not a CoordGAN encoder: its input {spec.describe()} is neither float32 "
                                "images (N, 3, S, S) nor uint8 frames (N, S, S, 3).")
        self.input_name = spec.name
        self.uint8_input = spec.dtype == np.uint8
        size = spec.shape[1] if self.uint8_input else spec.shape[2]
        if size is None:
            raise CoordGANError(f"The encoder's input {spec.describe()} has no fixed size.")
        self.size = int(size)
        self.batch = max(1, int(batch))
        self.path = None if isinstance(encoder, Backend) or is_address(str(encoder)) else Path(encoder)
        self._identity: str | None = None

    def identity(self) -> str:
        """What identifies the model's results: the SHA-256 of its file (an exported ONNX graph or engine;
        computed once), or the served model's description for a Triton address."""
        if self._identity is None:
            self._identity = f"sha256:{sha256_file(self.path)}" if self.path else self.backend.describe()
        return self._identity

    def encode(self, frames: np.ndarray, observer: Observer | None = None) -> dict[str, np.ndarray]:
        """uint8 frames (N, H, W, 3), any size -> corr_map, w_struct, w_texture, in batches; `observer`
        hears the preprocessing and the encoder apart."""
        observer = observer or Observer()
        with observer.stage("preprocess"):
            frames = resize_frames(check_frames(frames), self.size)
        parts: dict[str, list] = {}
        for start in range(0, len(frames), self.batch):
            with observer.stage("preprocess"):
                chunk = frames[start:start + self.batch]
                feed = chunk if self.uint8_input else to_unit_range(chunk)
            with observer.stage("encoder"):
                for name, value in self.backend.run({self.input_name: feed}).items():
                    parts.setdefault(name, []).append(value)
        return {name: np.concatenate(values) for name, values in parts.items()}

    def correspondence(self, frames: np.ndarray, observer: Observer | None = None) -> np.ndarray:
        corr = self.encode(frames, observer)["corr_map"]
        if corr.ndim != 4 or corr.shape[1] != 2:
            raise CoordGANError(f"{self.name} gave corr_map of shape {list(corr.shape)}, not (N, 2, H, W) "
                                "correspondence maps; it is not a CoordGAN encoder.")
        return corr.astype(np.float32, copy=False)

    def close(self):
        self.backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth")


def resolve_encoder(model: str | None, backend: str | None = None, url: str | None = None) -> str:
    """What `--model` / `--backend` / `--url` name, as the artifact open_backend takes: an encoder file
    (an export directory's encoder.onnx, or its .plan for --backend tensorrt), a Triton address, or
    a checkpoint path as given (exporting one needs PyTorch: export.cache, a layer up)."""
    if backend == "auto":  # the backend is chosen once the encoder is found
        backend = None
    if url:
        if backend not in (None, "triton"):
            raise CoordGANError(f"--url is a Triton address; it goes with --backend triton, not {backend}.")
        return url
    if model is None:
        raise CoordGANError("Give the encoder with --model (encoder.onnx, an export directory, a .plan, or "
                            "triton://host:port/model), or --backend triton --url triton://host:port/model.")
    if backend == "triton" or is_address(model):
        return model
    path = Path(model)
    if not path.exists():
        raise CoordGANError(f"Model {path} does not exist.")
    if path.is_dir():
        names = ("encoder.plan", "encoder.engine") if backend == "tensorrt" else ("encoder.onnx", "encoder.plan")
        for name in names:
            if (path / name).is_file():
                return str(path / name)
        how = ("build the engine with `coordgan export trt`" if backend == "tensorrt"
               else "export one with `coordgan export onnx`")
        raise CoordGANError(f"{path} holds no {' or '.join(names)}; {how}.")
    return str(path)


def open_model(artifact: str, *, backend: str | None = None, device: str = "auto", batch: int = 8
               ) -> CorrespondenceModel:
    """The correspondence model of an encoder artifact; `device` (auto, cpu, cuda) places ONNX Runtime
    (the lookup's place follows from the same value: runtime.lookup.impl_for_device). An ONNX encoder
    without a `backend` (or "auto") runs on the fastest CPU backend installed, by a trial on a batch of
    `batch` (runtime.backends.auto), or on ONNX Runtime's CUDA provider where it loads."""
    check_device(device)
    if backend in (None, "auto") and backend_for(artifact) == "onnxruntime":  # the default for an ONNX encoder
        return CorrespondenceModel(artifact, backend="auto", batch=batch, device=device, trial_batch=batch)
    kind = None if backend == "auto" else backend
    options = {"device": device} if (kind or backend_for(artifact)) in ("onnxruntime", "openvino") else {}
    return CorrespondenceModel(artifact, backend=kind, batch=batch, **options)
