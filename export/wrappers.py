"""The torch modules that are traced to ONNX: the deployable faces of the encoder and the generator.

They compute exactly what `coordgan.models` computes (verification compares them against the
untouched models), laid out for inference engines:

- the coordinate warping network runs pixel-major, as two plain 2-D GEMMs of (N*H*W, hidden)
  activations, so ONNX Runtime / TensorRT run one large matrix multiply with the bias and ReLU
  fused instead of a broadcast batched MatMul followed by separate Add and Relu passes;
- the uint8 variant of the encoder takes camera/video frames as they come (NHWC bytes) and does
  the cast, the scaling to [-1, 1] and the transpose inside the graph;
- the generator always runs with its fixed noise (`noise_mode="const"`) so the exported graph is
  a pure function of its inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from coordgan.correspondence import canonical_grid
from coordgan.models.generator import CoordWarpNet, Generator

UINT8_SCALE = 2.0 / 255.0  # frames / 127.5 - 1, written as one multiply-add


def frames_to_image(frames: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC frames -> float32 NCHW in [-1, 1], as the uint8 encoder graph computes it."""
    return frames.permute(0, 3, 1, 2).to(torch.float32) * UINT8_SCALE - 1.0


class PixelMajorWarp(nn.Module):
    """CoordWarpNet as pixel-major GEMMs: same function, engine-friendly layout.

    The first layer's coordinate half acts on the fixed canonical grid: a (H*W, hidden) table that
    does not depend on the batch; its latent half is one (N, hidden) row per image. Their broadcast
    sum is the only (N, H*W, hidden) elementwise pass; the 512x512 layer is then a single Gemm.

    `out_size` larger than the grid: the network runs on the coarse grid and its map is upsampled
    bilinearly (corners aligned: the coarse grid's points are fine-grid points), an approximation
    that cuts the network's arithmetic by (out_size / grid size)^2 (`coordgan export onnx --warp-grid`).
    """

    def __init__(self, foldnet: CoordWarpNet, grid: torch.Tensor, out_size: int | None = None):
        super().__init__()
        self.foldnet = foldnet
        self.register_buffer("grid", grid, persistent=False)
        _, self.height, self.width = grid.shape
        self.out_size = out_size if out_size and out_size != self.height else None

    def forward(self, w_struct: torch.Tensor) -> torch.Tensor:
        net = self.foldnet
        w1 = net.conv1_1.weight[:, :, 0]  # (hidden, 2 + D)
        hidden = w1.shape[0]
        coords = self.grid.reshape(2, -1).t()  # (HW, 2)
        per_pixel = coords @ w1[:, :2].t()  # (HW, hidden), batch-independent
        per_image = F.linear(w_struct, w1[:, 2:], net.conv1_1.bias)  # (N, hidden)
        x = torch.relu(per_pixel[None] + per_image[:, None, :]).reshape(-1, hidden)
        x = torch.relu(F.linear(x, net.conv1_2.weight[:, :, 0], net.conv1_2.bias))
        x = torch.tanh(F.linear(x, net.conv1_3.weight[:, :, 0], net.conv1_3.bias))  # (N*HW, 2)
        corr = x.reshape(-1, self.height, self.width, 2).permute(0, 3, 1, 2)
        if self.out_size:
            corr = F.interpolate(corr, size=(self.out_size, self.out_size), mode="bilinear", align_corners=True)
        return corr


def encoder_warp(generator: Generator, warp_grid: int | None = None) -> PixelMajorWarp:
    """The warping network of the encoder export: on the generator's own grid, or on a coarser
    warp_grid x warp_grid grid upsampled to it."""
    base = generator.grid.shape[-1]
    if not warp_grid or warp_grid == base:
        return PixelMajorWarp(generator.foldnet, generator.grid)
    grid = canonical_grid(warp_grid, warp_grid, device=generator.grid.device, dtype=generator.grid.dtype)
    return PixelMajorWarp(generator.foldnet, grid, out_size=base)


class EncoderWithWarp(nn.Module):
    """image (N,3,base,base) in [-1,1], or uint8 frames (N,base,base,3) -> (corr_map, w_struct, w_texture)."""

    def __init__(self, encoder: nn.Module, generator: Generator, uint8_input: bool = False,
                 warp_grid: int | None = None):
        super().__init__()
        self.encoder = encoder
        self.warp = encoder_warp(generator, warp_grid)
        self.uint8_input = uint8_input

    def forward(self, x: torch.Tensor):
        image = frames_to_image(x) if self.uint8_input else x
        w_struct, w_texture = self.encoder(image)
        return self.warp(w_struct), w_struct, w_texture


class GeneratorForExport(nn.Module):
    """(w_struct, w_texture W+) or (z_struct, z_texture) -> (image, corr_map) with the fixed noise."""

    def __init__(self, generator: Generator, input_space: str = "w"):
        super().__init__()
        if input_space not in ("w", "z"):
            raise ValueError("input_space must be 'w' or 'z'")
        self.generator = generator
        self.warp = PixelMajorWarp(generator.foldnet, generator.grid)
        self.input_space = input_space

    def forward(self, structure: torch.Tensor, texture: torch.Tensor):
        g = self.generator
        if self.input_space == "z":
            structure, texture = g.map_structure(structure), g.map_texture(texture)
        corr = self.warp(structure)
        return g.synthesize(texture, corr, noise_mode="const"), corr


def reference_outputs(encoder, generator, which: str, inputs: dict, *, uint8_input=False, input_space="w",
                      warp_grid=None):
    """The untouched PyTorch models' outputs for an exported model's inputs (what verify compares to); an
    export with a coarser warp grid is compared to that approximation computed in PyTorch."""
    with torch.no_grad():
        if which == "encoder":
            x = torch.from_numpy(next(iter(inputs.values())))
            image = frames_to_image(x) if uint8_input else x
            w_struct, w_texture = encoder(image)
            corr = generator.warp(w_struct) if not warp_grid else encoder_warp(generator, warp_grid)(w_struct)
            return {"corr_map": corr, "w_struct": w_struct, "w_texture": w_texture}
        s, t = (torch.from_numpy(v) for v in inputs.values())
        image, corr = generator(t, s, input_is_w=input_space == "w", noise_mode="const")
        return {"image": image, "corr_map": corr}
