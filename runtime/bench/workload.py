"""What is benchmarked: the targets, their synthetic inputs (numpy, seeded), shared by every backend.

    encoder    image (N, 3, S, S) float in [-1, 1] -> correspondence map + structure/texture codes
    generator  W codes (N, D) + W+ codes (N, n_latent, D) -> image
    lookup     query maps (N, 2, S, S) + reference memory (R maps, C-class probabilities) -> labels
    pipeline   what `coordgan propagate` does with a batch: N frames decoded from a video -> resize to
               S x S, encoder, lookup in a memory of R reference frames, upsample to H x W, argmax,
               palette PNGs written (the runtime backends run propagate's own step on it)

Correspondence maps are smooth random warps of the canonical grid (what a warping network gives),
label probabilities are soft (Dirichlet) over C classes; the lookup's cost does not depend on the
values beyond that.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.errors import CoordGANError

TARGETS = ("encoder", "generator", "lookup", "pipeline")


def warp_maps(rng, n: int, h: int, w: int, amp: float = 0.12) -> np.ndarray:
    """(n, 2, h, w) canonical grid + low-frequency sinusoidal displacement, clipped to [-1, 1]."""
    x = np.broadcast_to(np.linspace(-1, 1, w, dtype=np.float32)[None, :], (h, w))
    y = np.broadcast_to(np.linspace(-1, 1, h, dtype=np.float32)[:, None], (h, w))
    out = np.empty((n, 2, h, w), np.float32)
    for i in range(n):
        ph = rng.uniform(0, 2 * np.pi, 4)
        fr = rng.uniform(0.5, 2.0, 4)
        dx = amp * np.sin(np.pi * fr[0] * y + ph[0]) * np.cos(np.pi * fr[1] * x + ph[1])
        dy = amp * np.sin(np.pi * fr[2] * x + ph[2]) * np.cos(np.pi * fr[3] * y + ph[3])
        out[i, 0] = np.clip(x + dx, -1, 1)
        out[i, 1] = np.clip(y + dy, -1, 1)
    return out


GPU_LOOKUPS = ("cuda", "cuda-sparse")  # runtime.lookup impls that run beside GPU backends


@dataclass(frozen=True)
class Workload:
    target: str
    size: int  # canonical grid / encoder input size S
    style_dim: int = 512
    n_latent: int = 12
    frame_hw: tuple[int, int] | None = None  # pipeline frame size (default S x S)
    refs: int = 1
    classes: int = 8
    tau: float = 0.01
    lookup_method: str = "auto"  # dense | sparse | auto (CPU lookup paths)
    gpu_lookup: str = "cuda"  # cuda (the fused kernel) | cuda-sparse (the sparse kernels), beside GPU backends
    seed: int = 0

    def __post_init__(self):
        if self.target not in TARGETS:
            raise CoordGANError(f"Unknown target {self.target!r}; choose one of: {', '.join(TARGETS)}.")
        if self.lookup_method not in ("auto", "dense", "sparse"):
            raise CoordGANError(f"--lookup-method must be dense, sparse or auto, not {self.lookup_method!r}.")
        if self.gpu_lookup not in GPU_LOOKUPS:
            raise CoordGANError(f"--gpu-lookup must be {' or '.join(GPU_LOOKUPS)}, not {self.gpu_lookup!r}.")
        if self.refs < 1 or self.classes < 1 or self.tau <= 0:
            raise CoordGANError("--refs and --classes must be positive and --tau greater than 0.")
        if self.target == "pipeline" and self.classes > 256:
            raise CoordGANError(f"The pipeline writes 8-bit label PNGs: --classes must be at most 256, got "
                                f"{self.classes}.")

    @property
    def cpu_lookup_impl(self) -> str:
        """The runtime.lookup path of --lookup-method (auto: sparse, which runs dense where that is faster)."""
        return "sparse" if self.lookup_method == "auto" else self.lookup_method

    @property
    def frame_size(self) -> tuple[int, int]:
        return self.frame_hw or (self.size, self.size)

    def rng(self, batch: int):
        return np.random.default_rng([self.seed, batch])

    def image(self, batch: int) -> np.ndarray:
        return (self.rng(batch).random((batch, 3, self.size, self.size), dtype=np.float32) * 2 - 1)

    def codes(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        rng = self.rng(batch)
        w_struct = rng.standard_normal((batch, self.style_dim), dtype=np.float32)
        w_texture = rng.standard_normal((batch, self.n_latent, self.style_dim), dtype=np.float32)
        return w_struct, w_texture

    def frames(self, batch: int) -> np.ndarray:
        h, w = self.frame_size
        return self.rng(batch).integers(0, 256, (batch, h, w, 3), dtype=np.uint8)

    def video(self, batch: int, folder) -> Path:
        """An mp4 of frames(batch) in folder (made once per batch): what the pipeline decodes."""
        from runtime.io.video import VideoWriter

        path = Path(folder) / f"frames-{batch}.mp4"
        if not path.is_file():
            with VideoWriter(path, fps=24) as writer:
                for frame in self.frames(batch):
                    writer.write(frame)
        return path

    @staticmethod
    def decode(video: Path) -> list[tuple[int, str, np.ndarray]]:
        """(index, name, frame) of every frame, as propagate reads them."""
        from runtime.io.video import open_frames

        return list(open_frames(video).frames())

    def reference_memory(self) -> tuple[np.ndarray, np.ndarray]:
        """K (1, R, 2, S, S) and V (1, R, C, S, S): the annotated / recent frames a query looks up."""
        rng = np.random.default_rng([self.seed, 7919])
        s, r, c = self.size, self.refs, self.classes
        k = warp_maps(rng, r, s, s).reshape(1, r, 2, s, s)
        v = rng.dirichlet(np.full(c, 0.3), size=(1, r, s, s)).astype(np.float32).transpose(0, 1, 4, 2, 3)
        return k, np.ascontiguousarray(v)

    def lookup_inputs(self, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        q = warp_maps(self.rng(batch), batch, self.size, self.size)
        k, v = self.reference_memory()
        return q, np.repeat(k, batch, axis=0), np.repeat(v, batch, axis=0)

    def describe(self) -> str:
        s = f"{self.size}x{self.size}"
        if self.target == "encoder":
            return f"image {s} -> corr map + codes"
        if self.target == "generator":
            return f"W/W+ codes ({self.style_dim}) -> image"
        lk = f"R={self.refs}, C={self.classes}, tau={self.tau:g}"
        if self.target == "lookup":
            return f"lookup {s} vs {lk}"
        h, w = self.frame_size
        return f"video frames {h}x{w} decoded -> resize {s}, encoder, lookup ({lk}), upsample, argmax, PNGs written"


class PipelineScratch:
    """A pipeline row's scratch: the folder its video is decoded from and its masks written to, and
    the mask writer, set up as `coordgan propagate` sets it up (palette PNGs, a writer per core)."""

    def __init__(self):
        self._dir = None
        self._writer = None

    @property
    def path(self) -> Path:
        if self._dir is None:
            import tempfile

            self._dir = tempfile.TemporaryDirectory(prefix="coordgan-bench-")
        return Path(self._dir.name)

    def writer(self, values):
        """A new MaskWriter for label values `values` (the previous one, of another batch size, closed)."""
        from runtime.devices import cpu_threads
        from runtime.io.masks import DAVIS_PALETTE
        from runtime.propagation.output import MaskWriter

        if self._writer is not None:
            self._writer.close()
        self._writer = MaskWriter(self.path, DAVIS_PALETTE, values, workers=cpu_threads())
        return self._writer

    def close(self) -> None:
        """Stop the writer's threads, then remove the folder (even when the writer failed)."""
        try:
            if self._writer is not None:
                self._writer.close()
        finally:
            if self._dir is not None:
                self._dir.cleanup()
