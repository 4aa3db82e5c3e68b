"""CoordGAN training objectives (paper Sec. 3.4-3.5, supplementary F.2).

Image GAN: non-saturating G loss, logistic D loss, lazy R1. Structure swap: a Swapping-Autoencoder
patch discriminator judges whether a crop belongs to the image that gave the (averaged) reference
crops. Texture swap: LPIPS between two renders of one structure with two textures (or between
their standardised luminance, for random LPIPS backbones that see mostly colour). Warp: LPIPS
between an image and its partner warped into its frame by the soft correspondence lookup. Chamfer:
the warped coordinates must cover the canonical grid. Pairs are formed within the batch as
(0, 1), (2, 3), ... as in the public code, so batches are even.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import autograd

from coordgan.train.warp_ops import chamfer_distance, soft_warp

# -- image GAN --------------------------------------------------------------------------------------


def g_nonsaturating(fake_logits: torch.Tensor) -> torch.Tensor:
    return F.softplus(-fake_logits).mean()


def d_logistic(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def r1_penalty(logits: torch.Tensor, inputs: list[torch.Tensor]) -> torch.Tensor:
    """Mean over the batch of the squared gradient norm of the logits w.r.t. the (real) inputs."""
    grads = autograd.grad(logits.sum(), inputs, create_graph=True)
    return sum(g.square().flatten(1).sum(1) for g in grads).mean()


def ramp(step: int, warmup_iters: int) -> float:
    """Linear warm-up factor in [0, 1] of the warp, texture and structure weights."""
    return 1.0 if warmup_iters <= 0 else min(1.0, step / warmup_iters)


def pair_swap(n: int, device=None) -> torch.Tensor:
    """Index of each item's partner: [1, 0, 3, 2, ...] (the public `swap`)."""
    return torch.arange(n, device=device).view(-1, 2).flip(1).reshape(-1)


# -- structure swap: the patch discriminator ------------------------------------------------------


def random_crops(images: torch.Tensor, num: int, size: int, min_scale: float, max_scale: float) -> torch.Tensor:
    """(B, 3, H, W) -> (B, num, 3, size, size): crops of min..max_scale of each side, random h-flip.

    Scales are drawn per side (crops need not be square), positions uniformly inside the image;
    bilinear resampling through grid_sample keeps the crops differentiable w.r.t. the images.
    """
    b = images.shape[0]
    dev = images.device
    unit = torch.linspace(-1.0, 1.0, size, device=dev, dtype=images.dtype)
    gy, gx = torch.meshgrid(unit, unit, indexing="ij")
    grid = torch.stack((gx, gy), dim=-1).expand(b * num, size, size, 2)
    flip = torch.randint(0, 2, (b * num, 1, 1, 1), device=dev).to(images.dtype) * 2 - 1
    scale = torch.rand(b * num, 1, 1, 2, device=dev, dtype=images.dtype) * (max_scale - min_scale) + min_scale
    offset = (torch.rand(b * num, 1, 1, 2, device=dev, dtype=images.dtype) * 2 - 1) * (1 - scale)
    grid = grid * torch.cat((flip, torch.ones_like(flip)), dim=-1) * scale + offset
    src = images.unsqueeze(1).expand(-1, num, -1, -1, -1).flatten(0, 1)
    # border padding: a crop touching the image edge reaches half a pixel past it; do not blend in black
    crops = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return crops.view(b, num, *crops.shape[1:])


def _crops(images, cfg):
    return random_crops(images, cfg.patch_num_crops, cfg.patch_size, cfg.patch_min_scale, cfg.patch_max_scale)


def patch_d_loss(d_patch, reference: torch.Tensor, swapped: torch.Tensor, cfg) -> torch.Tensor:
    """D side: crops of `reference` itself are real, crops of its structure swap are fake."""
    ref = d_patch.extract_features(_crops(reference, cfg), aggregate=True)
    real = d_patch.extract_features(_crops(reference, cfg))
    fake = d_patch.extract_features(_crops(swapped, cfg))
    return (F.softplus(-d_patch.discriminate_features(ref, real)).mean()
            + F.softplus(d_patch.discriminate_features(ref, fake)).mean())


def patch_g_loss(d_patch, reference: torch.Tensor, swapped: torch.Tensor, cfg) -> torch.Tensor:
    """G side (non-saturating): the structure-swapped image's crops should pass as the reference's."""
    ref = d_patch.extract_features(_crops(reference, cfg), aggregate=True).detach()
    fake = d_patch.extract_features(_crops(swapped, cfg))
    return F.softplus(-d_patch.discriminate_features(ref, fake)).mean()


def patch_r1(d_patch, reference: torch.Tensor, cfg) -> torch.Tensor:
    """R1 of the patch D on its real pairs, w.r.t. both the reference and the target crops."""
    ref_crops = _crops(reference.detach(), cfg).requires_grad_(True)
    real_crops = _crops(reference.detach(), cfg).requires_grad_(True)
    logits = d_patch.discriminate_features(d_patch.extract_features(ref_crops, aggregate=True),
                                           d_patch.extract_features(real_crops))
    return r1_penalty(logits, [ref_crops, real_crops])


# -- texture swap, warp, chamfer ------------------------------------------------------------------


def perceptual(lpips, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return lpips(a, b).mean()


def luminance(images: torch.Tensor) -> torch.Tensor:
    """Grey images standardised per image (3 equal channels in [-1, 1]): what is left is layout.

    Grey is the plain channel mean (not a weighted luma): any recolouring that keeps it costs
    nothing, and a gain or offset of it almost nothing (the 1e-3 beside the std matters only at
    very low contrast). The variance is floored before the root so a flat image has a finite
    gradient; otherwise this equals torch.std bit for bit, so earlier tiny runs still reproduce.
    """
    grey = images.float().mean(1, keepdim=True)
    std = grey.var((2, 3), keepdim=True).clamp_min(1e-12).sqrt()
    grey = (grey - grey.mean((2, 3), keepdim=True)) / (std + 1e-3)
    return (grey * 0.5).clamp(-1, 1).expand(-1, 3, -1, -1)


def warp_partner(images: torch.Tensor, corr: torch.Tensor, tau: float) -> torch.Tensor:
    """Each image's partner (pair_swap) warped into its frame: query = own map, reference = partner's.

    Images larger than the correspondence map (the 512 model) are resized to it first, as published.
    """
    if images.shape[-1] != corr.shape[-1]:
        images = F.interpolate(images, size=corr.shape[-2:], mode="bilinear", align_corners=False)
    perm = pair_swap(images.shape[0], images.device)
    return soft_warp(corr, corr[perm], images[perm], tau)


def warp_loss(lpips, images: torch.Tensor, corr: torch.Tensor, tau: float) -> torch.Tensor:
    """LPIPS(x_i, x_partner warped into x_i's frame), both directions of every pair.

    The target is detached as in the public code: the loss moves the correspondence maps and the
    warped colours, not the image being matched.
    """
    warped = warp_partner(images, corr, tau)
    target = images if images.shape[-1] == corr.shape[-1] else F.interpolate(
        images, size=corr.shape[-2:], mode="bilinear", align_corners=False)
    return perceptual(lpips, warped.to(target.dtype), target.detach())


def chamfer_loss(corr: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Chamfer distance between each warped map (N, 2, H, W) and the canonical grid (2, H, W)."""
    n = corr.shape[0]
    warped = corr.flatten(2).transpose(1, 2)
    canonical = grid.flatten(1).t().unsqueeze(0).expand(n, -1, -1).to(corr.dtype)
    return chamfer_distance(warped, canonical)
