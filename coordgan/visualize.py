"""Pictures people look at: colour-coded correspondence maps and swap grids."""

from __future__ import annotations

import numpy as np
import torch


def corr_to_rgb(corr: torch.Tensor) -> torch.Tensor:
    """Correspondence maps (N, 2, H, W) in [-1, 1] -> RGB (N, 3, H, W) in [-1, 1]: x red, y green, blue fixed."""
    blue = torch.full_like(corr[:, :1], 0.5)
    return torch.cat([corr, blue], dim=1).clamp(-1, 1)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def tile(cells: list[list[np.ndarray | None]], cell: int, pad: int = 2) -> np.ndarray:
    """Lay out HxWx3 uint8 cells (None = blank) in a white-padded grid, each resized to `cell` px."""
    from PIL import Image

    rows, cols = len(cells), max(len(r) for r in cells)
    out = np.full((rows * (cell + pad) + pad, cols * (cell + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(cells):
        for j, img in enumerate(row):
            if img is None:
                continue
            if img.shape[0] != cell:
                img = np.asarray(Image.fromarray(img).resize((cell, cell), Image.NEAREST))
            y, x = pad + i * (cell + pad), pad + j * (cell + pad)
            out[y:y + cell, x:x + cell] = img
    return out


@torch.no_grad()
def swap_grid(generator, n: int = 4, seed: int = 0, cell: int = 128) -> np.ndarray:
    """Structure/texture swap grid with fixed noise.

    Top row: the correspondence maps of n structure codes. Below, row i renders texture i on every
    structure (a structure swap along the row); column j keeps structure j while the texture
    changes (a texture swap down the column). Parts should line up down each column.
    """
    gen = torch.Generator().manual_seed(seed)
    d = generator.cfg.style_dim
    device = next(generator.parameters()).device
    z_s = torch.randn(n, d, generator=gen).to(device)
    z_t = torch.randn(n, d, generator=gen).to(device)
    w_s, w_t = generator.map_structure(z_s), generator.map_texture(z_t)
    corr = generator.warp(w_s)
    cells: list[list[np.ndarray | None]] = [list(to_uint8(corr_to_rgb(corr)))]
    for i in range(n):
        images = generator.synthesize(w_t[i:i + 1].expand(n, -1), corr, noise_mode="const")
        cells.append(list(to_uint8(images)))
    return tile(cells, cell)
