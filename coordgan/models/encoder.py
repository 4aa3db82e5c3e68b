"""CoordGAN encoder: image -> structure code w_s (W) and texture codes w_t+ (W+).

Swapping-Autoencoder design as published: from-RGB, residual down-sampling blocks with
reflection padding and a [1, 2, 1] anti-aliasing blur; a structure head (1x1 convs to a small
spatial code, then one FC to D) and a texture head (strided convs, average pool, one FC per
W+ code). Attribute names match NVlabs/CoordGAN's `Encoder`.
"""

from __future__ import annotations

import torch
from torch import nn

from coordgan.config import ModelConfig
from coordgan.models.layers import EqualLinear, NamedConvLayer, NamedResBlock


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        nc = self.channels
        n_sp, n_gl = cfg.enc_spatial_downs, cfg.enc_global_downs
        self.add_module("FromRGB", NamedConvLayer(3, nc(0), 1))
        self.DownToSpatialCode = nn.Sequential()
        for i in range(n_sp):
            self.DownToSpatialCode.add_module(
                f"ResBlockDownBy{2 ** i}", NamedResBlock(nc(i), nc(i + 1), (1, 2, 1), reflection_pad=True))
        self.ToSpatialCode = nn.Sequential(
            NamedConvLayer(nc(n_sp), nc(n_sp), 1),
            NamedConvLayer(nc(n_sp), cfg.enc_spatial_code_channels, 1, activate=False, pad=0),
        )
        spatial = cfg.base_size // 2**n_sp
        self.sp_fc = EqualLinear(spatial * spatial * cfg.enc_spatial_code_channels, cfg.style_dim)
        self.DownToGlobalCode = nn.Sequential()
        for i in range(n_gl):
            level = n_sp + i
            self.DownToGlobalCode.add_module(
                f"ConvLayerDownBy{2 ** level}",
                NamedConvLayer(nc(level), nc(level + 1), 3, blur_kernel=(1,), downsample=True, pad=1))
        self.ToGlobalCode = nn.Sequential(
            *[EqualLinear(nc(n_sp + n_gl), cfg.style_dim) for _ in range(cfg.n_texture_codes)])

    def channels(self, level: int) -> int:
        return min(self.cfg.enc_max_channels, self.cfg.enc_base_channels * 2**level)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """image (N, 3, base, base) in [-1, 1] -> (w_struct (N, D), w_texture (N, n_codes, D))."""
        mid = self.DownToSpatialCode(self.FromRGB(image))
        w_struct = self.sp_fc(self.ToSpatialCode(mid).flatten(1))
        pooled = self.DownToGlobalCode(mid).mean(dim=(2, 3))
        w_texture = torch.stack([head(pooled) for head in self.ToGlobalCode], dim=1)
        return w_struct, w_texture
