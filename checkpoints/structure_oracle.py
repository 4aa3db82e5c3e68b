"""What the best possible encoder could score with a generator: a diagnostic for the tiny checkpoint.

For each of eval-propagation's synthetic faces, fit the structure code w_s whose map g.warp(w_s)
best matches the renderer's true coordinates (gradient descent on w_s, with one similarity
transform shared by all faces, since the generator's canonical frame is its own; mirrored and not),
then score those maps like `coordgan eval-propagation`. If even they do not beat the identity
baseline, no encoder on this generator can; if they do, the encoder is what falls short. With an
encoder in the checkpoint, its maps too, with its codes shrunk toward the GAN's mean code by 1,
0.5, 0.25 and 0 (0 gives every face the same map: the identity baseline where that map does not
fold), which shows whether the encoder's codes say anything about real faces.

    python checkpoints/structure_oracle.py runs/tiny/checkpoints/step_005000.safetensors
"""

from __future__ import annotations

import argparse

import torch

from coordgan import checkpoint
from coordgan import evaluation as ev
from runtime.errors import CoordGANError


def code_stats(g) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and per-dimension spread of the structure codes the GAN samples."""
    with torch.no_grad():
        w = g.map_structure(torch.randn(4096, g.cfg.style_dim, generator=torch.Generator().manual_seed(0)))
    return w.mean(0), w.std(0)


def fit_maps(generator, coords: torch.Tensor, face: torch.Tensor, mirrored: bool, steps: int) -> torch.Tensor:
    """Maps (N, 2, H, W) of the structure codes that best fit `coords` up to a shared similarity."""
    g = generator.eval().requires_grad_(False)
    mean, std = code_stats(g)
    u = torch.zeros(len(coords), g.cfg.style_dim, requires_grad=True)  # w_s = mean + std * u
    ac = torch.tensor([1.0, 0.0], requires_grad=True)  # similarity: scale * (cos, sin)
    shift = torch.zeros(2, requires_grad=True)
    flip = -1.0 if mirrored else 1.0
    weight = 0.25 + face  # every pixel counts, face pixels 5x
    opt = torch.optim.Adam([u, ac, shift], lr=0.05)
    for _ in range(steps):
        a = torch.stack([torch.stack([ac[0], -flip * ac[1]]), torch.stack([ac[1], flip * ac[0]])])
        target = torch.einsum("ij,njhw->nihw", a, coords) + shift[:, None, None]
        spread = ((target - target.mean((0, 2, 3), keepdim=True)) ** 2 * weight).sum()
        loss = ((g.warp(mean + std * u) - target) ** 2 * weight).sum() / spread  # a shrunken target gains nothing
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return g.warp(mean + std * u)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt")
    parser.add_argument("--steps", type=int, default=400, help="gradient steps of the fit")
    parser.add_argument("--faces", type=int, default=50, help="synthetic faces (5 references, the rest queries)")
    args = parser.parse_args()
    if args.faces < 6 or args.steps < 0:
        parser.error("--faces must be at least 6 (5 references and a query) and --steps at least 0")
    try:
        ck = checkpoint.load(args.ckpt)
    except CoordGANError as exc:
        parser.exit(1, f"Error: {exc}\n")
    generator = ck.generator.eval()
    data = ev.synthetic_faces(args.faces, generator.cfg.size, 0)
    coords = torch.tensor(data.coords)
    face = torch.tensor(data.labels > 0, dtype=torch.float32)[:, None]
    refs, queries = ev.split_refs(data)

    def report(what: str, maps: torch.Tensor) -> None:
        result = ev.evaluate_maps(maps[: len(refs)], maps[len(refs):], refs, queries, lookup="sparse")
        off = ev.match_error({what: (maps[: len(refs)], maps[len(refs):])}, refs, queries)[what]
        print(f"{what}: mIoU {result.miou * 100:.2f} % (identity baseline {result.identity_miou * 100:.2f} %), "
              f"matches land {off:.2f} px off")

    for mirrored in (False, True):
        report("mirrored fit" if mirrored else "upright fit", fit_maps(generator, coords, face, mirrored, args.steps))
    if "e" in ck.networks:  # how much the encoder's codes say: shrunk toward the mean code
        mean, _ = code_stats(generator)
        with torch.no_grad():
            codes = ck.encoder.eval()(ev.to_tensor(data.images))[0]
            for lam in (1.0, 0.5, 0.25, 0.0):
                report(f"encoder, codes shrunk to {lam:g}", generator.warp(mean + lam * (codes - mean)))


if __name__ == "__main__":
    main()
