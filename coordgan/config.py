"""Model configuration: one dataclass, named presets.

The published presets reproduce NVlabs/CoordGAN's architecture exactly (parameter counts are
tested); `tiny` keeps every structural feature at toy scale for tests, demos and CPU training.
Torch-free, so the CLI can list presets without importing PyTorch.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

from runtime.errors import CoordGANError


@dataclass(frozen=True)
class LossWeights:
    """Training objective weights (paper supplementary F.2; `chamfer` 200 in the public configs)."""

    gan: float = 2.0
    texture_swap: float = 5.0  # lambda_t (LPIPS between two texture codes, same structure)
    warp: float = 5.0  # lambda_warp (LPIPS between x2 and x1 warped by the soft lookup)
    structure_swap: float = 1.0  # lambda_s (patch discriminator)
    chamfer: float = 100.0
    r1: float = 10.0  # image discriminator, lazy, every `d_reg_every` steps
    r1_patch: float = 1.0
    warmup_iters: int = 20_000  # warp, texture and structure weights ramp up linearly
    warp_tau: float = 0.01
    # Compare the texture-swap pair on standardised luminance instead of RGB (generator training
    # only). A random LPIPS backbone measures mostly colour, so on RGB the term cannot see pose.
    texture_swap_luminance: bool = False
    # encoder training
    enc_rec: float = 10.0
    enc_con: float = 10.0
    enc_texture: float = 5.0


@dataclass(frozen=True)
class ModelConfig:
    name: str
    size: int = 128  # output image resolution
    base_size: int = 128  # canonical grid = resolution of the structure-modulated layers
    style_dim: int = 512  # W dimension of both mapping networks and the encoder codes
    n_mlp: int = 8  # equalized linear layers per mapping network
    lr_mlp: float = 0.01
    channels: int = 512  # generator channels at base_size (and Fourier features)
    n_base_pairs: int = 5  # conv pairs at base_size after the first conv (log2(128) - 2 in the public code)
    up_channels: tuple[int, ...] = ()  # channels of each upsampling pair beyond base_size (512 variant: 128, 64)
    warp_hidden: int = 512  # coordinate warping network width
    warp_latent_gain: float = 1.0  # init scale of the warping network's structure-code weights
    # encoder (Swapping-Autoencoder style); channels at level i = min(enc_max_channels, enc_base_channels * 2**i)
    enc_base_channels: int = 32
    enc_max_channels: int = 1 << 20
    enc_spatial_downs: int = 4
    enc_global_downs: int = 2
    enc_spatial_code_channels: int = 64
    # image discriminator: channels at resolution r = min(d_max_channels, d_channel_base // r)
    d_channel_base: int = 32768
    d_max_channels: int = 512
    d_from_rgb_sizes: tuple[int, ...] = (128, 256, 512)  # the public D keeps a from-RGB layer per stage
    # patch discriminator (structure-swap loss)
    patch_size: int = 32
    patch_capacity: float = 2.0
    patch_max_channels: int = 256
    patch_hidden: int = 1024
    patch_num_crops: int = 8
    patch_min_scale: float = 0.125
    patch_max_scale: float = 0.25
    # training
    lr: float = 0.002
    betas: tuple[float, float] = (0.0, 0.99)
    batch: int = 16
    d_reg_every: int = 16
    g_reg_every: int = 4
    ema_half_life_kimg: float = 10.0
    losses: LossWeights = field(default_factory=LossWeights)

    @property
    def n_latent(self) -> int:
        """Number of W+ texture codes the synthesis network consumes (12 at 128, 16 at 512)."""
        return 2 + 2 * (self.n_base_pairs + len(self.up_channels))

    @property
    def n_texture_codes(self) -> int:
        return self.n_latent

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CoordGANError(f"The model config has unknown fields: {', '.join(unknown)}.")
        losses = LossWeights(**data.pop("losses", {}))
        for key in ("up_channels", "d_from_rgb_sizes", "betas"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(losses=losses, **data)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        return cls.from_dict(json.loads(text))


_CELEBA_128 = ModelConfig(name="celeba-128")

PRESETS: dict[str, ModelConfig] = {
    "celeba-128": _CELEBA_128,
    "celeba-512": dataclasses.replace(_CELEBA_128, name="celeba-512", size=512, up_channels=(128, 64)),
    "cars-128": dataclasses.replace(_CELEBA_128, name="cars-128"),
    "cats-128": dataclasses.replace(_CELEBA_128, name="cats-128"),
    # Every structural feature of the published model at toy scale: 32 px, <= 64 channels.
    "tiny": ModelConfig(
        name="tiny",
        size=32,
        base_size=32,
        style_dim=64,
        n_mlp=4,
        channels=64,
        n_base_pairs=2,
        warp_hidden=64,
        enc_base_channels=16,
        enc_max_channels=64,
        enc_spatial_downs=2,
        enc_global_downs=2,
        enc_spatial_code_channels=16,
        d_channel_base=1024,
        d_max_channels=64,
        d_from_rgb_sizes=(32,),
        patch_size=16,
        patch_capacity=0.25,
        patch_max_channels=64,
        patch_hidden=128,
        batch=4,
        # The published 10 kimg half-life is 2500 steps at batch 4: a short CPU run's EMA would
        # still be mostly its initial weights.
        ema_half_life_kimg=1.0,
        # Tiny runs on machines without the ImageNet LPIPS weights use --lpips-random-backbone. With
        # the published loss weights and a random backbone, pose moved into the texture codes and
        # the structure branch collapsed (measured, README "Training"); these keep the pose in the
        # structure code: a colour-blind texture-swap term that outweighs the GAN, a Chamfer weight
        # that lets the warp move, and a warp network that starts out listening to the structure code.
        warp_latent_gain=4.0,
        losses=LossWeights(warmup_iters=1000, texture_swap=25.0, chamfer=10.0, texture_swap_luminance=True),
    ),
}


def get_preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise CoordGANError(
            f"Unknown preset {name!r}; choose one of: {', '.join(PRESETS)}."
        ) from None


def scaled_to_batch(cfg: ModelConfig, batch: int) -> tuple[ModelConfig, str | None]:
    """cfg for a global batch other than its own, by StyleGAN2-ADA's rule, and a line saying so.

    ADA keeps the learning rate whatever the batch, sets the R1 gamma to 0.0002 * res^2 / batch
    (inversely proportional to the batch) and the EMA length to batch * 10/32 kimg (proportional:
    the same number of steps). So r1 scales by cfg.batch / batch and the EMA half-life (in images)
    by batch / cfg.batch; the patch discriminator's R1 and the learning rates stay.
    """
    if batch == cfg.batch:
        return cfg, None
    k = cfg.batch / batch
    scaled = dataclasses.replace(cfg, batch=batch, ema_half_life_kimg=cfg.ema_half_life_kimg / k,
                                 losses=dataclasses.replace(cfg.losses, r1=cfg.losses.r1 * k))
    return scaled, (f"batch {batch} instead of the preset's {cfg.batch}, scaled as StyleGAN2-ADA does: r1 "
                    f"{cfg.losses.r1:g} -> {scaled.losses.r1:g}, EMA half-life {cfg.ema_half_life_kimg:g} -> "
                    f"{scaled.ema_half_life_kimg:g} kimg, learning rates kept")


ENCODER_LOSSES = ("enc_rec", "enc_con", "enc_texture")  # what encoder training reads; the rest is the GAN's


def loss_names(kind: str) -> tuple[str, ...]:
    """The LossWeights fields that `kind` ("generator" or "encoder") training reads."""
    names = tuple(f.name for f in dataclasses.fields(LossWeights))
    return ENCODER_LOSSES if kind == "encoder" else tuple(n for n in names if n not in ENCODER_LOSSES)


def with_losses(cfg: ModelConfig, assignments, kind: str = "generator") -> ModelConfig:
    """cfg with loss weights replaced, from 'NAME=VALUE' strings (e.g. 'chamfer=100').

    NAME must be a weight that `kind` training reads; values take the type of the field they
    replace; a bad name or value is one sentence.
    """
    changes, allowed = {}, loss_names(kind)
    for text in assignments or ():
        name, sep, raw = str(text).partition("=")
        name, raw = name.strip(), raw.strip()
        if not sep or name not in allowed:
            raise CoordGANError(f"{kind.capitalize()} training takes --loss NAME=VALUE with NAME one of "
                                f"{', '.join(allowed)}; got {text!r}.")
        ftype = type(getattr(LossWeights(), name))  # a saved config may hold 10 for 10.0
        try:
            if ftype is bool:
                if raw.lower() not in ("true", "false", "1", "0"):
                    raise ValueError
                value = raw.lower() in ("true", "1")
            else:
                value = ftype(raw)
                if not (math.isfinite(value) and value >= 0) or (name == "warp_tau" and value == 0):
                    raise ValueError
        except ValueError:
            low = "> 0" if name == "warp_tau" else ">= 0"
            what = "true or false" if ftype is bool else f"a{'n' if ftype is int else ''} {ftype.__name__} {low}"
            raise CoordGANError(f"--loss {name} needs {what}, got {raw!r}.") from None
        changes[name] = value
    return dataclasses.replace(cfg, losses=dataclasses.replace(cfg.losses, **changes)) if changes else cfg
