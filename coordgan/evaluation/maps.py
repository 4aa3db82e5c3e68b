"""Correspondence maps of the benchmark's images: a model's (through a corr_fn), the identity grid,
and how far a map's matches land from the ground truth's."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from coordgan.correspondence import canonical_grid
from coordgan.evaluation.data import LabelledImages, check_sets
from runtime.errors import CoordGANError

CorrFn = Callable[[torch.Tensor], torch.Tensor]


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [-1, 1] (the training scaling)."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def identity_corr(images: torch.Tensor) -> torch.Tensor:
    """The canonical grid for every image: propagation by position (the identity baseline)."""
    n, _, h, w = images.shape
    return canonical_grid(h, w, device=images.device).unsqueeze(0).expand(n, -1, -1, -1).contiguous()


def checkpoint_corr_fn(ck, device: str | torch.device = "cpu") -> CorrFn:
    """encoder -> w_struct -> generator.warp of a loaded Checkpoint, as a corr_fn."""
    return networks_corr_fn(ck.encoder, ck.generator, device)  # CoordGANError (one sentence) without an encoder


def networks_corr_fn(encoder, generator, device: str | torch.device = "cpu") -> CorrFn:
    """encoder -> w_struct -> generator.warp, as a corr_fn."""
    encoder = encoder.to(device).eval()
    generator = generator.to(device).eval()

    @torch.no_grad()
    def corr(images: torch.Tensor) -> torch.Tensor:
        w_struct, _ = encoder(images.to(device))
        return generator.warp(w_struct).float()

    return corr


def _maps(corr_fn: CorrFn, images: np.ndarray, batch: int, device, size: tuple[int, int], what: str,
          advance: Callable[[int], None] | None) -> torch.Tensor:
    out = []
    for s in range(0, len(images), batch):
        x = to_tensor(images[s:s + batch]).to(device)
        with torch.no_grad():
            m = corr_fn(x)
        if not isinstance(m, torch.Tensor) or m.dim() != 4 or m.shape[1] != 2:
            raise CoordGANError(f"The correspondence function must return maps (N, 2, H, W), got "
                                f"{tuple(getattr(m, 'shape', ())) or type(m).__name__} for the {what}.")
        if tuple(m.shape[2:]) != size:
            # labels live at the image size; bring the maps there (bilinear keeps coordinates in range)
            m = torch.nn.functional.interpolate(m.float(), size=size, mode="bilinear", align_corners=False)
        out.append(m.float().to(device))
        if advance:
            advance(len(x))
    return torch.cat(out)


def correspondence_maps(corr_fn: CorrFn, refs: LabelledImages, queries: LabelledImages, *, batch: int = 8,
                        device: str | torch.device = "cpu",
                        progress: Callable[[str, int, int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """corr_fn's maps of the references (R, 2, H, W) and the queries (Q, 2, H, W), at the label size."""
    size = check_sets(refs, queries, batch)
    total_maps = len(refs) + len(queries)
    done = [0]

    def adv(k):
        done[0] += k
        if progress:
            progress("maps", done[0], total_maps)

    ref_maps = _maps(corr_fn, refs.images, batch, device, size, "references", adv)
    return ref_maps, _maps(corr_fn, queries.images, batch, device, size, "queries", adv)


def match_error(maps: dict[str, tuple], refs: LabelledImages, queries: LabelledImages, *,
                ignore_index: int | None = 0) -> dict[str, float] | None:
    """How far each set of maps' matches land from the true ones, in pixels (None without ground truth).

    `maps`: name -> (ref_maps (R, 2, H, W), query_maps (Q, 2, H, W)). For every scored query pixel
    and every reference: the reference pixel with the nearest coordinate through the given maps,
    and the one through the data's ground-truth maps; the mean distance between the two. Finer
    grained than the IoU of parts a few pixels across. Exact nearest neighbours through k-d trees
    (one per reference map), so 128 px takes seconds on a CPU.
    """
    if refs.coords is None or queries.coords is None:
        return None
    from scipy.spatial import cKDTree

    h, w = refs.labels.shape[1:]
    pix = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij"), -1).reshape(-1, 2).astype(np.float64)

    def points(m):  # a map (2, H, W) -> (H*W, 2) coordinates
        return np.asarray(torch.as_tensor(m).detach().cpu().double()).reshape(2, -1).T

    sets = {"truth": (refs.coords, queries.coords), **maps}
    trees = {name: [cKDTree(points(r)) for r in ref_maps] for name, (ref_maps, _) in sets.items()}
    total, count = dict.fromkeys(maps, 0.0), 0
    for qi in range(len(queries)):
        lab = queries.labels[qi]
        keep = ((lab != ignore_index) if ignore_index is not None else np.ones(lab.shape, bool)).reshape(-1)
        kept = {name: points(query_maps[qi])[keep] for name, (_, query_maps) in sets.items()}
        for ri in range(len(refs)):
            truth = pix[trees["truth"][ri].query(kept["truth"])[1]]
            for name in maps:
                found = pix[trees[name][ri].query(kept[name])[1]]
                total[name] += float(np.linalg.norm(found - truth, axis=1).sum())
            count += int(keep.sum())
    return {name: t / max(count, 1) for name, t in total.items()}
