"""The CoordGAN networks; `build(cfg)` makes all of them for one config."""

from __future__ import annotations

from coordgan.config import ModelConfig
from coordgan.models.discriminator import Discriminator, PatchDiscriminator
from coordgan.models.encoder import Encoder
from coordgan.models.generator import Generator

__all__ = ["Generator", "Encoder", "Discriminator", "PatchDiscriminator", "build", "NETWORKS", "count_parameters"]

NETWORKS = {"g": Generator, "e": Encoder, "d": Discriminator, "d_patch": PatchDiscriminator}


def build(cfg: ModelConfig, which=("g", "e", "d", "d_patch")) -> dict:
    """Fresh networks for `cfg`, keyed like the public checkpoints: g, e, d, d_patch."""
    return {key: NETWORKS[key](cfg) for key in which}


def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())
