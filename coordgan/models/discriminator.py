"""Discriminators: the StyleGAN2 residual image D and the Swapping-Autoencoder patch D.

Attribute names match NVlabs/CoordGAN's `Discriminator` and `PatchDiscriminator`.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

from coordgan.config import ModelConfig
from coordgan.models.layers import ConvLayer, EqualLinear, NamedConvLayer, NamedResBlock, ResBlock


class Discriminator(nn.Module):
    """Residual D with minibatch standard deviation; one from-RGB layer per training stage."""

    stddev_group = 4

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        ch = self.channels
        self.from_rgb = nn.ModuleList([ConvLayer(3, ch(s), 1) for s in cfg.d_from_rgb_sizes])
        self.log_size = int(math.log2(cfg.size))
        convs, in_ch = [], ch(cfg.size)
        for i in range(self.log_size, 2, -1):
            convs.append(ResBlock(in_ch, ch(2 ** (i - 1))))
            in_ch = ch(2 ** (i - 1))
        self.convs = nn.Sequential(*convs)
        self.final_conv = ConvLayer(in_ch + 1, ch(4), 3)
        self.final_linear = nn.Sequential(
            EqualLinear(ch(4) * 4 * 4, ch(4), activation="fused_lrelu"),
            EqualLinear(ch(4), 1),
        )

    def channels(self, res: int) -> int:
        return min(self.cfg.d_max_channels, self.cfg.d_channel_base // res)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image (N, 3, r, r) with r one of d_from_rgb_sizes -> logits (N, 1)."""
        res = image.shape[-1]
        if res not in self.cfg.d_from_rgb_sizes:
            raise ValueError(f"discriminator takes images of {self.cfg.d_from_rgb_sizes}, got {res}")
        out = self.from_rgb[self.cfg.d_from_rgb_sizes.index(res)](image)
        for block in self.convs[self.log_size - int(math.log2(res)):]:
            out = block(out)
        out = torch.cat([out, self._minibatch_stddev(out)], dim=1)
        out = self.final_conv(out)
        return self.final_linear(out.flatten(1))

    def _minibatch_stddev(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        group = min(n, self.stddev_group)
        if n % group:
            group = 1  # the public code requires divisibility; fall back to per-sample groups
        y = x.reshape(group, -1, 1, c, h, w)
        y = torch.sqrt(y.var(0, unbiased=False) + 1e-8).mean([2, 3, 4], keepdim=True).squeeze(2)
        return y.repeat(group, 1, h, w)


class PatchDiscriminator(nn.Module):
    """Structure-swap D: features of reference crops, averaged, paired with a real or fake crop."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        cap, max_nc = cfg.patch_capacity, cfg.patch_max_channels
        ch = {
            4: min(max_nc, int(256 * cap)),
            8: min(max_nc, int(128 * cap)),
            16: min(max_nc, int(64 * cap)),
            32: int(32 * cap),
            64: int(16 * cap),
            128: int(8 * cap),
            256: int(4 * cap),
        }
        log_size = int(math.ceil(math.log2(cfg.patch_size)))
        in_ch = ch[2**log_size]
        convs = [("0", NamedConvLayer(3, in_ch, 3))]
        for i in range(log_size, 2, -1):
            name = str(7 - i) if i <= 6 else f"{2 ** i}x{2 ** i}"
            convs.append((name, NamedResBlock(in_ch, ch[2 ** (i - 1)])))
            in_ch = ch[2 ** (i - 1)]
        convs.append(("5", NamedConvLayer(in_ch, max_nc, 3, pad=0)))
        self.convs = nn.Sequential(OrderedDict(convs))
        self.pairlinear = nn.Sequential(
            EqualLinear(max_nc * 2 * 2 * 2, cfg.patch_hidden, activation="fused_lrelu"),
            EqualLinear(cfg.patch_hidden, 1),
        )

    def extract_features(self, patches: torch.Tensor, aggregate: bool = False) -> torch.Tensor:
        """patches (B, T, 3, p, p) -> features (B*T, C, 2, 2); `aggregate` averages over T."""
        b, t = patches.shape[:2]
        feats = self.convs(patches.flatten(0, 1))
        feats = feats.reshape(b, t, *feats.shape[1:])
        if aggregate:
            feats = feats.mean(1, keepdim=True).expand(-1, t, -1, -1, -1)
        return feats.flatten(0, 1)

    def discriminate_features(self, feature1: torch.Tensor, feature2: torch.Tensor) -> torch.Tensor:
        return self.pairlinear(torch.cat([feature1.flatten(1), feature2.flatten(1)], dim=1))
