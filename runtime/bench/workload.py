"""What is benchmarked: the targets, their synthetic inputs (numpy, seeded), shared by every backend.

    encoder    image (N, 3, S, S) float in [-1, 1] -> correspondence map + structure/texture codes
    generator  W codes (N, D) + W+ codes (N, n_latent, D) -> image
    lookup     query maps (N, 2, S, S) + reference memory (R maps, C-class probabilities) -> labels
    pipeline   frames (N, H, W, 3) uint8 -> resize to S x S, encoder, lookup, upsample to H x W, argmax

Correspondence maps are smooth random warps of the canonical grid (what a warping network gives),
label probabilities are soft (Dirichlet) over C classes; the lookup's cost does not depend on the
values beyond that.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    seed: int = 0

    def __post_init__(self):
        if self.target not in TARGETS:
            raise CoordGANError(f"Unknown target {self.target!r}; choose one of: {', '.join(TARGETS)}.")
        if self.lookup_method not in ("auto", "dense", "sparse"):
            raise CoordGANError(f"--lookup-method must be dense, sparse or auto, not {self.lookup_method!r}.")
        if self.refs < 1 or self.classes < 1 or self.tau <= 0:
            raise CoordGANError("--refs and --classes must be positive and --tau greater than 0.")

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
        return f"frame {h}x{w} uint8 -> resize {s}, encoder, lookup ({lk}), upsample, argmax"


def upsample_probs(p: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(N, C, h, w) -> (N, C, H, W) bilinear (half-pixel centres, as torch align_corners=False)."""
    h, w = p.shape[2:]
    H, W = hw
    if (h, w) == (H, W):
        return p

    def axis(n_in, n_out):
        x = (np.arange(n_out, dtype=np.float32) + 0.5) * (n_in / n_out) - 0.5
        x = np.clip(x, 0, n_in - 1)
        i0 = np.floor(x).astype(np.int64)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, (x - i0).astype(np.float32)

    y0, y1, fy = axis(h, H)
    x0, x1, fx = axis(w, W)
    rows = p[:, :, y0] * (1 - fy)[:, None] + p[:, :, y1] * fy[:, None]
    return rows[..., x0] * (1 - fx) + rows[..., x1] * fx
