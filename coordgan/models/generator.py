"""CoordGAN generator: structure -> correspondence map, texture -> appearance.

A structure code w_s drives the coordinate warping network, which maps the canonical grid to a
correspondence map C (2 x base x base, tanh). C goes through Fourier features and a modulated
StyleGAN2 synthesis network that keeps base resolution throughout; C is concatenated after
every conv at base resolution; the 512 variant appends upsampling pairs. Attribute names match
NVlabs/CoordGAN's `CoordGAN` module so the authors' checkpoints load as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from coordgan.config import ModelConfig
from coordgan.correspondence import canonical_grid
from coordgan.models.layers import EqualLinear, PixelNorm, StyledConv, ToRGB

NOISE_MODES = ("random", "const", "none")
CONST_NOISE_SEED = 0x5EED  # fixed noise is a pure function of this seed and the layer shapes


def mapping_network(style_dim: int, n_mlp: int, lr_mlp: float) -> nn.Sequential:
    """Pixel norm + n_mlp equalized linear layers with bias-act (lr multiplier 0.01)."""
    layers = [PixelNorm()]
    layers += [EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation="fused_lrelu") for _ in range(n_mlp)]
    return nn.Sequential(*layers)


class CoordWarpNet(nn.Module):
    """Three 1x1 layers [C, w_s] -> 512 -> 512 -> 2, ReLU, tanh (public name: `foldnet`).

    The first layer acts on the concatenation [canonical coords (2), w_s (D)]; its latent half is
    the same for every pixel, so it is computed once per image and added as a bias: the same
    function with about half the FLOPs of the published per-pixel concatenation.
    """

    def __init__(self, style_dim: int, hidden: int, latent_gain: float = 1.0):
        super().__init__()
        self.conv1_1 = nn.Conv1d(2 + style_dim, hidden, 1)
        self.conv1_2 = nn.Conv1d(hidden, hidden, 1)
        self.conv1_3 = nn.Conv1d(hidden, 2, 1)
        if latent_gain != 1.0:  # a stronger start for the structure code (ModelConfig.warp_latent_gain)
            with torch.no_grad():
                self.conv1_1.weight[:, 2:] *= latent_gain

    def forward(self, coords: torch.Tensor, w_struct: torch.Tensor) -> torch.Tensor:
        """coords (2, H, W) canonical grid, w_struct (N, D) -> correspondence map (N, 2, H, W)."""
        _, h, w = coords.shape
        w1 = self.conv1_1.weight[:, :, 0]
        per_pixel = w1[:, :2] @ coords.reshape(2, h * w)  # (hidden, HW), batch-independent
        per_image = F.linear(w_struct, w1[:, 2:], self.conv1_1.bias)  # (N, hidden)
        x = torch.relu(per_pixel[None] + per_image[:, :, None])
        x = torch.relu(torch.matmul(self.conv1_2.weight[:, :, 0], x) + self.conv1_2.bias[:, None])
        x = torch.matmul(self.conv1_3.weight[:, :, 0], x) + self.conv1_3.bias[:, None]
        return torch.tanh(x).reshape(-1, 2, h, w)


class FourierFeatures(nn.Module):
    """Positional encoding of the correspondence map: 1x1 conv 2 -> channels, then sin (public name: `lff`)."""

    def __init__(self, channels: int):
        super().__init__()
        self.ffm = _ConvLinear(2, channels)

    def forward(self, coords):
        return torch.sin(self.ffm(coords))


class _ConvLinear(nn.Module):
    def __init__(self, ch_in: int, ch_out: int):
        super().__init__()
        self.conv = nn.Conv2d(ch_in, ch_out, kernel_size=1)
        bound = (9 / ch_in) ** 0.5  # SIREN-style first-layer init, as published
        nn.init.uniform_(self.conv.weight, -bound, bound)

    def forward(self, x):
        return self.conv(x)


class Generator(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d, ch, base = cfg.style_dim, cfg.channels, cfg.base_size
        self.style = mapping_network(d, cfg.n_mlp, cfg.lr_mlp)  # texture
        self.struc = mapping_network(d, cfg.n_mlp, cfg.lr_mlp)  # structure
        self.foldnet = CoordWarpNet(d, cfg.warp_hidden, cfg.warp_latent_gain)
        self.lff = FourierFeatures(ch)
        self.conv1 = StyledConv(ch, ch, 3, d)
        self.to_rgb1 = ToRGB(ch + 2, d, upsample=False)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        for _ in range(cfg.n_base_pairs):  # base resolution; the map is concatenated after every conv
            self.convs.append(StyledConv(ch + 2, ch, 3, d))
            self.convs.append(StyledConv(ch + 2, ch, 3, d))
            self.to_rgbs.append(ToRGB(ch + 2, d, upsample=False))
        in_ch = ch + 2
        for out_ch in cfg.up_channels:  # high-resolution pairs, no concatenation
            self.convs.append(StyledConv(in_ch, out_ch, 3, d, upsample=True))
            self.convs.append(StyledConv(out_ch, out_ch, 3, d))
            self.to_rgbs.append(ToRGB(out_ch, d))
            in_ch = out_ch
        self.n_latent = cfg.n_latent
        self.register_buffer("grid", canonical_grid(base, base), persistent=False)
        # Fixed noise for deterministic inference (export, serving); not saved, derived from a seed.
        gen = torch.Generator().manual_seed(CONST_NOISE_SEED)
        for i, res in enumerate(self.noise_resolutions()):
            self.register_buffer(f"noise_const_{i}", torch.randn(1, 1, res, res, generator=gen), persistent=False)

    def noise_resolutions(self) -> list[int]:
        """Resolution of each noise input, in the order `forward(noise=[...])` takes them."""
        base = self.cfg.base_size
        res = [base] * (1 + 2 * self.cfg.n_base_pairs)
        for i in range(len(self.cfg.up_channels)):
            res += [base * 2 ** (i + 1)] * 2
        return res

    # -- the three stages, usable on their own -------------------------------------------------
    def map_structure(self, z: torch.Tensor) -> torch.Tensor:
        return self.struc(z)

    def map_texture(self, z: torch.Tensor) -> torch.Tensor:
        return self.style(z)

    def warp(self, w_struct: torch.Tensor) -> torch.Tensor:
        """Structure code (N, D) -> correspondence map (N, 2, base, base) in [-1, 1]."""
        return self.foldnet(self.grid, w_struct)

    def synthesize(self, w_texture: torch.Tensor, corr: torch.Tensor, noise_mode: str = "random",
                   noise: list[torch.Tensor] | None = None, size: int | None = None) -> torch.Tensor:
        """Texture codes (N, D) or W+ (N, n_latent, D) and a correspondence map -> image.

        `size` stops at an earlier stage (e.g. 128 for the 512 model's first training stage).
        """
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}")
        latent = w_texture if w_texture.ndim == 3 else w_texture[:, None].expand(-1, self.n_latent, -1)
        noises = self._noises(noise_mode, noise)
        n_pairs = len(self.to_rgbs) if size is None else (
            self.cfg.n_base_pairs + max(0, (size // self.cfg.base_size).bit_length() - 1))
        out = self.conv1(self.lff(corr), latent[:, 0], noise=noises[0])
        out = torch.cat((out, corr), dim=1)
        skip = self.to_rgb1(out, latent[:, 1])
        for p in range(n_pairs):
            i = 2 * p
            concat = p < self.cfg.n_base_pairs
            out = self.convs[i](out, latent[:, i + 1], noise=noises[i + 1])
            if concat:
                out = torch.cat((out, corr), dim=1)
            out = self.convs[i + 1](out, latent[:, i + 2], noise=noises[i + 2])
            if concat:
                out = torch.cat((out, corr), dim=1)
            skip = self.to_rgbs[p](out, latent[:, i + 3], skip)
        return skip

    def _noises(self, noise_mode, noise):
        n = len(self.noise_resolutions())
        if noise is not None:
            if len(noise) != n:
                raise ValueError(f"expected {n} noise tensors, got {len(noise)}")
            return noise
        if noise_mode == "random":
            return [None] * n
        consts = [getattr(self, f"noise_const_{i}") for i in range(n)]
        return consts if noise_mode == "const" else [torch.zeros_like(c) for c in consts]

    def forward(self, texture: torch.Tensor, structure: torch.Tensor, *, input_is_w: bool = False,
                noise_mode: str = "random", noise=None, size: int | None = None):
        """(texture, structure) z codes, or W codes with `input_is_w` -> (image, correspondence map).

        With `input_is_w`, texture may be W (N, D) or W+ (N, n_latent, D), as the encoder gives.
        """
        w_s = structure if input_is_w else self.map_structure(structure)
        w_t = texture if input_is_w else self.map_texture(texture)
        corr = self.warp(w_s)
        return self.synthesize(w_t, corr, noise_mode=noise_mode, noise=noise, size=size), corr
