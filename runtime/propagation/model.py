"""Frames -> correspondence maps through an exported encoder, and the lookup behind one call.

    model = CorrespondenceModel("export/encoder.onnx")          # or a .plan, or triton://...
    corr = model.correspondence(frames)                          # (N, 2, S, S) float32
    probs, labels = model.lookup(corr, ref_maps, ref_probs)      # CUDA, sparse CPU or dense CPU

The encoder graph takes either float images (`image`, NCHW in [-1, 1]) or uint8 frames
(`frames`, NHWC); the model reads which from the backend's input and feeds it accordingly.
"""

from __future__ import annotations

import numpy as np

from runtime.errors import CoordGANError
from runtime import lookup as lookup_ops
from runtime.backends import Backend, open_backend
from runtime.propagation.preprocess import check_frames, resize_frames, to_unit_range


class CorrespondenceModel:
    def __init__(self, encoder, *, backend: str | None = None, batch: int = 8, lookup_device: str = "auto",
                 **backend_options):
        self.backend: Backend = encoder if isinstance(encoder, Backend) else open_backend(
            encoder, backend=backend, **backend_options)
        if len(self.backend.inputs) != 1 or "corr_map" not in {o.name for o in self.backend.outputs}:
            raise CoordGANError(f"{encoder} is not a CoordGAN encoder: expected one image input and a "
                                f"corr_map output, found {self.backend.describe()}.")
        spec = self.backend.inputs[0]
        self.input_name = spec.name
        self.uint8_input = spec.dtype == np.uint8
        size = spec.shape[1] if self.uint8_input else spec.shape[2]
        if size is None:
            raise CoordGANError(f"The encoder's input {spec.describe()} has no fixed size.")
        self.size = int(size)
        self.batch = max(1, int(batch))
        self.lookup_device = lookup_device

    def encode(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 frames (N, H, W, 3), any size -> corr_map, w_struct, w_texture, in batches."""
        frames = resize_frames(check_frames(frames), self.size)
        parts: dict[str, list] = {}
        for start in range(0, len(frames), self.batch):
            chunk = frames[start:start + self.batch]
            feed = chunk if self.uint8_input else to_unit_range(chunk)
            for name, value in self.backend.run({self.input_name: feed}).items():
                parts.setdefault(name, []).append(value)
        return {name: np.concatenate(values) for name, values in parts.items()}

    def correspondence(self, frames: np.ndarray) -> np.ndarray:
        return self.encode(frames)["corr_map"].astype(np.float32, copy=False)

    def lookup(self, query, ref_maps, ref_probs, *, tau: float = 0.01, mode: str = "soft", k: int | None = None,
               method: str = "auto"):
        """Label probabilities and labels for query maps; the GPU kernel where it runs, else sparse/dense CPU."""
        device = self.lookup_device if method == "auto" else "cpu"
        return lookup_ops.lookup(query, ref_maps, ref_probs, tau=tau, mode=mode, k=k, device=device, method=method)

    def close(self):
        self.backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
