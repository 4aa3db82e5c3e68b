"""Inputs and checks shared by the lookup tests: smooth random warps of the canonical grid (what a
CoordGAN warping network makes), blobby label probabilities, a real tiny model's maps, and the torch
reference. Every run draws fresh inputs (`seeded_rng`; the suite's `rng` fixture, tests/conftest.py); a
failure prints its seed, and LOOKUP_TEST_SEED replays it."""

from __future__ import annotations

import os

import numpy as np
import torch

from coordgan.correspondence import canonical_grid
from coordgan.correspondence import lookup as reference
from runtime.bench.workload import warp_maps as warp


class SeededRng:
    """numpy Generator that remembers its seed, for failure messages."""

    def __init__(self, seed: int) -> None:
        self.seed_value = seed
        self._gen = np.random.default_rng(seed)

    def __getattr__(self, name):
        return getattr(self._gen, name)


def seeded_rng() -> SeededRng:
    return SeededRng(int(os.environ.get("LOOKUP_TEST_SEED", np.random.SeedSequence().entropy % 2**32)))


def grid(h: int, w: int) -> np.ndarray:
    return canonical_grid(h, w).numpy()


def probs(rng, n: int, r: int, c: int, h: int, w: int, one_hot: bool = False) -> np.ndarray:
    """(n, r, c, h, w) label probabilities: blobby one-hot masks or softened ones."""
    g = grid(h, w)
    lab = np.zeros((n, r, h, w), np.int64)
    for i in range(n):
        for j in range(r):
            centers = rng.uniform(-1, 1, (c, 2))
            d = (g[0][None] - centers[:, 0, None, None]) ** 2 + (g[1][None] - centers[:, 1, None, None]) ** 2
            lab[i, j] = d.argmin(axis=0)
    v = np.eye(c, dtype=np.float32)[lab].transpose(0, 1, 4, 2, 3)
    if not one_hot:
        v = v + rng.uniform(0, 0.3, v.shape).astype(np.float32)
        v /= v.sum(axis=2, keepdims=True)
    return np.ascontiguousarray(v)


def case(rng, n=1, r=1, c=4, hq=24, wq=20, hk=20, wk=22, one_hot=False):
    q = warp(rng, n, hq, wq)
    k = warp(rng, n * r, hk, wk).reshape(n, r, 2, hk, wk)
    v = probs(rng, n, r, c, hk, wk, one_hot)
    return q, k, v


def ref(q, kmap, v, **kw):
    p, labels = reference(torch.from_numpy(q), torch.from_numpy(kmap), torch.from_numpy(v), **kw)
    return p.numpy(), labels.numpy()


def assert_labels(labels, labels_ref, p_ref, seed, margin=1e-5):
    """Labels equal wherever the reference's top two classes are more than `margin` apart."""
    top2 = np.sort(p_ref, axis=1)[:, -2:] if p_ref.shape[1] > 1 else None
    clear = np.ones(labels.shape, bool) if top2 is None else (top2[:, 1] - top2[:, 0]) > margin
    assert np.array_equal(labels[clear], labels_ref[clear]), f"seed {seed}"


def tiny_model_maps(seed: int, n: int) -> np.ndarray:
    """(n, 2, 32, 32) correspondence maps from the tiny preset's warping network (random weights),
    for random structure codes."""
    from coordgan.config import PRESETS
    from coordgan.models import build

    torch.manual_seed(seed)
    g = build(PRESETS["tiny"], which=("g",))["g"].eval()
    with torch.no_grad():
        return g.warp(g.map_structure(torch.randn(n, PRESETS["tiny"].style_dim))).numpy()


def degenerate_maps(rng, kmap: np.ndarray) -> dict[str, np.ndarray]:
    """Reference maps the sparse paths must survive: in a corner (queries far from every reference),
    squeezed into a tiny area, all on one point, collapsed as an untrained encoder's, scattered."""
    return {
        "corner": (kmap * 0.3 - 0.6).astype(np.float32),
        "tiny area": (kmap * 0.01 + 0.5).astype(np.float32),
        "one point": np.full_like(kmap, 0.25),
        "collapsed": rng.normal(0, 0.002, kmap.shape).astype(np.float32),
        "scattered": rng.uniform(-1, 1, kmap.shape).astype(np.float32),
    }


def tiny_model_case(rng):
    """Two queries against one reference, all three maps of a real tiny model's warping network."""
    maps = tiny_model_maps(rng.seed_value, 3)
    assert maps.std() > 1e-2  # the maps vary
    return maps[:2], maps[2][None, None].repeat(2, axis=0), probs(rng, 2, 1, 5, 32, 32)
