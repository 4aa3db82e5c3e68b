"""One R1 pass of the discriminator (D(x), its gradient w.r.t. x with create_graph, the squared
norm's backward): the blurs as plain grouped convolutions vs as `_PaddedFir`, alternating in one
process; ops counted with a TorchDispatchMode (on a GPU each is at least one launch).

    python benchmarks/bench_r1_blur.py tiny 16 3          (preset, batch, repeats)
    python benchmarks/bench_r1_blur.py celeba-128 2 2
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import coordgan.models.layers as layers  # noqa: E402
from coordgan.config import get_preset  # noqa: E402
from coordgan.models.discriminator import Discriminator  # noqa: E402


class Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def main() -> None:
    preset, batch, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    cfg = get_preset(preset)
    torch.manual_seed(0)
    d = Discriminator(cfg)
    x0 = torch.randn(batch, 3, cfg.size, cfg.size)
    exporting = layers._exporting

    def r1():
        x = x0.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(d(x).sum(), x, create_graph=True)
        loss = g.square().flatten(1).sum(1).mean()
        d.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in d.parameters() if p.grad is not None]

    grads, times, ops = {}, {"plain": [], "fir": []}, {}
    for rep in range(repeats):
        for name in times:
            # plain: the path the exporters take (a grouped convolution, differentiated by torch)
            layers._exporting = (lambda: True) if name == "plain" else exporting
            if rep == 0:
                r1()
                with Count() as count:
                    r1()
                ops[name] = count.n
            t0 = time.perf_counter()
            grads[name] = r1()
            times[name].append(time.perf_counter() - t0)
    layers._exporting = exporting
    # float32 rounding differs between the two paths: relative to the largest gradient of the network
    diff = (max((a - b).abs().max().item() for a, b in zip(grads["plain"], grads["fir"]))
            / max(a.abs().max().item() for a in grads["plain"]))
    plain, fir = min(times["plain"]), min(times["fir"])
    print(f"{preset}, batch {batch}: ops {ops['plain']} -> {ops['fir']}; best ms {plain * 1e3:.0f} -> {fir * 1e3:.0f} "
          f"({plain / fir:.2f}x); max rel. grad difference {diff:.1e}")


if __name__ == "__main__":
    main()
