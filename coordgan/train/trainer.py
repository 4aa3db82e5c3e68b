"""Generator training: CoordGAN's D / R1 / G steps (paper Sec. 3.4, supplementary F.2).

One step, as in NVlabs/CoordGAN's train.py:
  D:  logistic loss on real vs generated images; patch D: crops of a generated image (real) vs
      crops of its structure swap (fake); every `d_reg_every` steps lazy R1 on both.
  G:  non-saturating GAN + texture swap (LPIPS) + structure swap (patch D) + warp (LPIPS of the
      soft-warped partner) + Chamfer, then the EMA update of g_ema.
The warm-up ramps the G-side warp, texture and structure weights (paper F.2); the patch D's own
loss is not ramped, so it is a trained critic by the time the structure loss reaches G. The public
code instead switches both patch losses on after 10k steps and ramps the GAN weight; not copied.
Adam with StyleGAN2's lazy-regularization adjustment (lr * r, betas ** r, r = k / (k + 1)),
applied to G with g_reg_every as the public code does, although it has no G regularizer.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F

from coordgan.config import ModelConfig
from coordgan.models import build
from coordgan.train import losses as L
from coordgan.train.loop import Run
from runtime.errors import CoordGANError

STRUCTURE_BRANCH = ("struc.", "foldnet.")  # frozen in the 512 stage (the public --fix_struc_grad)


def _edges(images: torch.Tensor) -> torch.Tensor:
    """Sobel edge magnitude of the grey image, blurred 3x3 and normalised to mean 1 per image."""
    grey = images.float().mean(1, keepdim=True)
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], device=images.device).view(1, 1, 3, 3)
    e = (F.conv2d(grey, kx, padding=1) ** 2 + F.conv2d(grey, kx.transpose(2, 3), padding=1) ** 2).sqrt()
    e = F.avg_pool2d(e, 3, 1, 1)
    return e / e.flatten(1).mean(1).clamp_min(1e-8).view(-1, 1, 1, 1)


def adam(params, cfg: ModelConfig, reg_every: int) -> torch.optim.Adam:
    ratio = reg_every / (reg_every + 1)
    return torch.optim.Adam(params, lr=cfg.lr * ratio, betas=tuple(b ** ratio for b in cfg.betas))


def ema_decay(cfg: ModelConfig, global_batch: int) -> float:
    return 0.5 ** (global_batch / (cfg.ema_half_life_kimg * 1000))


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- lerp(ema, model, 1 - decay), buffers copied: a few multi-tensor kernels on a GPU,
    not one per tensor (the same values as per-tensor lerp_ and copy_)."""
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)
    torch._foreach_copy_(list(ema.buffers()), list(model.buffers()))


def set_requires_grad(params, flag: bool) -> None:
    for p in params:
        p.requires_grad_(flag)


def check_batch(batch: int) -> None:
    if batch < 2 or batch % 2:
        raise CoordGANError(f"--batch must be an even number >= 2 (the swap losses pair images), got {batch}.")


class GeneratorTraining:
    kind = "generator"

    def __init__(self, cfg: ModelConfig, run: Run, lpips, freeze_structure: bool = False):
        check_batch(run.opts.batch)
        self.cfg, self.run, self.lpips = cfg, run, lpips
        self.freeze_structure = freeze_structure
        self.metadata = {"freeze_structure": freeze_structure}  # stored with each checkpoint, read on resume
        nets = build(cfg, which=("g", "d", "d_patch"))
        dev = run.device
        self.g, self.d, self.d_patch = (nets[k].to(dev).train() for k in ("g", "d", "d_patch"))
        self.g_ema = copy.deepcopy(self.g).eval().requires_grad_(False)
        self.g_trainable = [p for n, p in self.g.named_parameters()
                            if not (freeze_structure and n.startswith(STRUCTURE_BRANCH))]
        self.d_params = list(self.d.parameters()) + list(self.d_patch.parameters())
        self.opt_g = adam(self.g_trainable, cfg, cfg.g_reg_every)
        self.opt_d = adam(self.d_params, cfg, cfg.d_reg_every)
        self.decay = ema_decay(cfg, run.opts.batch * run.dist.world)
        self._apply_freeze()

    def _apply_freeze(self):
        if self.freeze_structure:
            set_requires_grad([p for n, p in self.g.named_parameters() if n.startswith(STRUCTURE_BRANCH)], False)

    # -- what the loop needs ----------------------------------------------------------------------
    def checkpoint_networks(self):
        return {"g": self.g, "g_ema": self.g_ema, "d": self.d, "d_patch": self.d_patch}

    def load_networks(self, networks) -> None:
        for key, net in self.checkpoint_networks().items():
            net.load_state_dict(networks[key].state_dict())

    def optimizers(self):
        return {"g": self.opt_g, "d": self.opt_d}

    def sample_grid(self) -> np.ndarray:
        from coordgan.visualize import swap_grid

        return swap_grid(self.g_ema, n=4, seed=0, cell=max(64, min(self.cfg.size, 128)))

    @torch.no_grad()
    def sample_stats(self) -> str:
        """Which code moves the image layout (g_ema, fixed codes)?

        Pose must live in the structure branch for correspondences to mean anything. Two numbers:
        how far 64 structure codes move the correspondence map (its size at step 0 depends on the
        initialisation, so watch how it changes), and on an 8 texture x 8 structure grid how much
        more the images' edges move across structure codes than across texture codes: under 1,
        the texture codes carry the layout and the correspondences cannot follow the pose.
        """
        g, dev = self.g_ema, self.run.device
        gen = torch.Generator().manual_seed(0)  # fixed codes, and the training RNG stays untouched
        z = torch.randn(64, self.cfg.style_dim, generator=gen).to(dev)
        # a few codes at a time: at 128 px the warp network's activations take about 130 MB per code
        corr = torch.cat([g.warp(g.map_structure(part)) for part in z.split(4)])
        std = float(corr.std(0).mean())
        px = std * (self.cfg.base_size - 1) / 2
        w_t = g.map_texture(torch.randn(8, self.cfg.style_dim, generator=gen).to(dev))
        edges = torch.stack([_edges(g.synthesize(w.expand(8, -1), corr[:8], noise_mode="const")) for w in w_t])
        ratio = float(edges.std(1).mean() / edges.std(0).mean().clamp_min(1e-8))  # (texture, structure, ...)
        return (f"structure branch: correspondence maps vary by {std:.3f} ({px:.2f} px) over 64 structure codes; "
                f"image edges vary {ratio:.2f}x as much across structure codes as across texture codes")

    # -- one step ---------------------------------------------------------------------------------
    def _generate(self, n: int):
        """x (texture i, structure i), x_t (texture partner(i), structure i), correspondence maps."""
        dev, dim = self.run.device, self.cfg.style_dim
        w_t = self.g.map_texture(torch.randn(n, dim, device=dev))
        w_s = self.g.map_structure(torch.randn(n, dim, device=dev))
        corr = self.g.warp(w_s)
        perm = L.pair_swap(n, dev)
        both = self.g.synthesize(torch.cat((w_t, w_t[perm])), torch.cat((corr, corr)))
        x, x_t = both.chunk(2)
        return x, x_t, corr, perm

    def d_step(self, it: int, real: torch.Tensor) -> dict[str, float]:
        cfg, w, run = self.cfg, self.cfg.losses, self.run
        set_requires_grad(self.g.parameters(), False)
        set_requires_grad(self.d_params, True)
        with torch.no_grad(), run.autocast():
            x, x_t, _, perm = self._generate(real.shape[0])
        with run.autocast():
            terms = {"d_gan": L.d_logistic(self.d(real), self.d(x)),
                     "d_patch": L.patch_d_loss(self.d_patch, x, x_t[perm], cfg)}
        out = run.optimize(it, terms, {"d_gan": w.gan, "d_patch": w.structure_swap}, self.opt_d, "d_")
        if it % cfg.d_reg_every == 0:  # lazy R1, scaled by the interval; in float32 for stability
            real_r = real.detach().requires_grad_(True)
            terms = {"r1": L.r1_penalty(self.d(real_r), [real_r]), "r1_patch": L.patch_r1(self.d_patch, x, cfg)}
            k = cfg.d_reg_every
            out.update(run.optimize(it, terms, {"r1": w.r1 / 2 * k, "r1_patch": w.r1_patch / 2 * k},
                                    self.opt_d, "r1_"))
        return out

    def g_step(self, it: int, n: int) -> dict[str, float]:
        cfg, w, run = self.cfg, self.cfg.losses, self.run
        set_requires_grad(self.d_params, False)
        set_requires_grad(self.g_trainable, True)
        ramp = L.ramp(it, w.warmup_iters)
        with run.autocast():
            x, x_t, corr, perm = self._generate(n)
            swap_pair = map(L.luminance, (x, x_t)) if w.texture_swap_luminance else (x, x_t)
            terms = {
                "g_gan": L.g_nonsaturating(self.d(x)),
                "g_texture": L.perceptual(self.lpips, *swap_pair),
                "g_structure": L.patch_g_loss(self.d_patch, x, x_t[perm], cfg),
                "g_warp": L.warp_loss(self.lpips, x, corr, w.warp_tau),
                "g_chamfer": L.chamfer_loss(corr.float(), self.g.grid),
            }
        weights = {"g_gan": w.gan, "g_texture": ramp * w.texture_swap, "g_structure": ramp * w.structure_swap,
                   "g_warp": ramp * w.warp, "g_chamfer": 0.0 if self.freeze_structure else w.chamfer}
        out = run.optimize(it, terms, weights, self.opt_g, "g_")
        out["ramp"] = ramp
        return out

    def train_step(self, it: int, real: torch.Tensor) -> dict[str, float]:
        out = self.d_step(it, real)
        out.update(self.g_step(it, real.shape[0]))
        update_ema(self.g_ema, self.g, self.decay)
        return out


# --------------------------------------------------------------------------------------------------
# The 512 stage: start a larger model from a checkpoint trained at the canonical resolution.


def init_from(task: GeneratorTraining, ckpt) -> list[str]:
    """Copy a base-resolution run (e.g. celeba-128) into a larger one (e.g. celeba-512).

    G: every shared parameter (the base network; the upsampling pairs stay fresh). D: the
    from-RGB layers by resolution and the residual blocks shifted by the added levels. Patch D
    as is. Returns one line describing what was copied.
    """
    src_cfg, cfg = ckpt.config, task.cfg
    if src_cfg.base_size != cfg.base_size or src_cfg.style_dim != cfg.style_dim or src_cfg.size > cfg.size:
        raise CoordGANError(f"--init-from needs a checkpoint of the same canonical grid and style size at a "
                            f"resolution up to {cfg.size}; {ckpt.path} is preset {src_cfg.name!r} "
                            f"({src_cfg.size} px, grid {src_cfg.base_size}, style {src_cfg.style_dim}).")
    g_src = ckpt.networks.get("g", ckpt.networks.get("g_ema"))
    ema_src = ckpt.networks.get("g_ema", g_src)
    if g_src is None:
        raise CoordGANError(f"{ckpt.path} holds no generator to start from.")
    n_g = _copy_matching(task.g, g_src.state_dict(), ckpt.path, "g")
    _copy_matching(task.g_ema, ema_src.state_dict(), ckpt.path, "g_ema")
    notes = [f"initialised from {ckpt.path}: {n_g} generator tensors"]
    if "d" in ckpt.networks:
        shift = int(math.log2(cfg.size // src_cfg.size))
        state = {}
        for key, t in ckpt.networks["d"].state_dict().items():
            head, _, rest = key.partition(".")
            if head == "convs":
                i, _, rest2 = rest.partition(".")
                key = f"convs.{int(i) + shift}.{rest2}"
            elif head == "from_rgb":
                i, _, rest2 = rest.partition(".")
                size = src_cfg.d_from_rgb_sizes[int(i)]
                if size not in cfg.d_from_rgb_sizes:
                    continue
                key = f"from_rgb.{cfg.d_from_rgb_sizes.index(size)}.{rest2}"
            state[key] = t
        notes.append(f"{_copy_matching(task.d, state, ckpt.path, 'd')} discriminator tensors")
    if "d_patch" in ckpt.networks:
        notes.append(f"{_copy_matching(task.d_patch, ckpt.networks['d_patch'].state_dict(), ckpt.path, 'd_patch')} "
                     "patch-discriminator tensors")
    return ["; ".join(notes) + (" (structure branch frozen)" if task.freeze_structure else "")]


def _copy_matching(net: torch.nn.Module, state: dict, path, key: str) -> int:
    own = net.state_dict()
    bad = [k for k, t in state.items() if k in own and own[k].shape != t.shape]
    if bad:
        raise CoordGANError(f"--init-from {path} [{key}] does not fit this model: {bad[0]} has shape "
                            f"{tuple(state[bad[0]].shape)}, expected {tuple(own[bad[0]].shape)}.")
    shared = {k: t for k, t in state.items() if k in own}
    with torch.no_grad():
        for k, t in shared.items():
            own[k].copy_(t)
    return len(shared)
