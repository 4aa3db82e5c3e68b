"""Encoder training (paper Sec. 3.5): the generator frozen, the encoder learns to invert it.

Per step:
  reconstruction  L1 + LPIPS between a real image x and G(E(x)) (W structure, W+ texture codes);
  consistency     L2 (mean squared error) between the structure code w_s of a synthesized image
                  and E's re-encoding of it, and between their correspondence maps. The paper
                  writes L2; NVlabs/CoordGAN's train-encoder.py uses L1. We follow the paper;
  texture swap    LPIPS between x and G(partner's texture codes, x's structure code).
Weights cfg.losses.enc_rec (both reconstruction terms), enc_con (both consistency terms),
enc_texture. The optimizer gets the same lazy-regularization adjustment as the public code.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from coordgan.config import ModelConfig
from coordgan.models import Encoder
from coordgan.train import losses as L
from coordgan.train.loop import Run
from coordgan.train.trainer import adam, check_batch


class EncoderTraining:
    kind = "encoder"

    def __init__(self, cfg: ModelConfig, run: Run, lpips, generator: torch.nn.Module, sample_images: torch.Tensor,
                 generator_trained: dict | None = None):
        check_batch(run.opts.batch)
        self.cfg, self.run, self.lpips = cfg, run, lpips
        # stored with each checkpoint: how the frozen generator was trained (its own checkpoint's record)
        self.metadata = {"generator": generator_trained} if generator_trained else {}
        self.g = generator.to(run.device).eval().requires_grad_(False)  # frozen; gradients pass through
        self.e = Encoder(cfg).to(run.device).train()
        self.opt_e = adam(self.e.parameters(), cfg, cfg.g_reg_every)
        self.sample_images = sample_images

    def checkpoint_networks(self):
        return {"g_ema": self.g, "e": self.e}

    def load_networks(self, networks) -> None:
        self.g.load_state_dict(networks["g_ema"].state_dict())
        self.e.load_state_dict(networks["e"].state_dict())

    def optimizers(self):
        return {"e": self.opt_e}

    def train_step(self, it: int, real: torch.Tensor) -> dict[str, float]:
        w, run, g, e = self.cfg.losses, self.run, self.g, self.e
        n, dev = real.shape[0], run.device
        perm = L.pair_swap(n, dev)
        with run.autocast():
            w_s_e, w_t_e = e(self._encoder_input(real))
            corr_e = g.warp(w_s_e)
            both = g.synthesize(torch.cat((w_t_e, w_t_e[perm])), torch.cat((corr_e, corr_e)))
            rec, swapped = both.chunk(2)
            with torch.no_grad():
                w_s = g.map_structure(torch.randn(n, self.cfg.style_dim, device=dev))
                w_t = g.map_texture(torch.randn(n, self.cfg.style_dim, device=dev))
                corr = g.warp(w_s)
                fake = g.synthesize(w_t, corr)
            w_s_c, _ = e(self._encoder_input(fake))
            terms = {
                "e_rec_l1": F.l1_loss(rec.float(), real),
                "e_rec_lpips": L.perceptual(self.lpips, rec, real),
                "e_con_ws": F.mse_loss(w_s_c.float(), w_s.float()),
                "e_con_corr": F.mse_loss(g.warp(w_s_c).float(), corr.float()),
                "e_texture": L.perceptual(self.lpips, swapped, real),
            }
        weights = {"e_rec_l1": w.enc_rec, "e_rec_lpips": w.enc_rec, "e_con_ws": w.enc_con,
                   "e_con_corr": w.enc_con, "e_texture": w.enc_texture}
        return run.optimize(it, terms, weights, self.opt_e, "e_")

    def _encoder_input(self, images: torch.Tensor) -> torch.Tensor:
        """The encoder reads the canonical resolution; larger models' images are resized to it."""
        base = self.cfg.base_size
        if images.shape[-1] == base:
            return images
        return F.interpolate(images, size=(base, base), mode="bilinear", align_corners=False, antialias=True)

    def sample_stats(self) -> str:
        return ""

    @torch.no_grad()
    def sample_grid(self) -> np.ndarray:
        """Rows: real images, their reconstructions (fixed noise), their correspondence maps."""
        from coordgan.visualize import corr_to_rgb, tile, to_uint8

        real = self.sample_images.to(self.run.device)
        w_s, w_t = self.e(self._encoder_input(real))
        corr = self.g.warp(w_s)
        rec = self.g.synthesize(w_t, corr, noise_mode="const")
        rows = [list(to_uint8(real)), list(to_uint8(rec)), list(to_uint8(corr_to_rgb(corr)))]
        return tile(rows, max(64, min(self.cfg.size, 128)))
