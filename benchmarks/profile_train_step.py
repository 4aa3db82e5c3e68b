"""Where a generator training step spends its time: step times at several loss chunk sizes side by
side in one run, then a torch.profiler table of the fastest.

    python benchmarks/profile_train_step.py --device cuda --batch 256 --amp   (a lent GPU)
    python benchmarks/profile_train_step.py --batch 4 --steps 2               (CPU smoke run)

The soft warp and the Chamfer loss work in chunks of `chunk_size` query points counted over the
batch (memory O(chunk x M)); the default suits a CPU, and on a GPU a small chunk means many tiny
kernels. Random "real" images: only the time is measured here.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from coordgan.config import get_preset, scaled_to_batch  # noqa: E402
from coordgan.train import warp_ops  # noqa: E402
from coordgan.train.loop import Run, RunOptions  # noqa: E402
from coordgan.train.perceptual import build_lpips  # noqa: E402
from coordgan.train.trainer import GeneratorTraining  # noqa: E402


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build(args, chunk: int, out: Path):
    for fn in (warp_ops.soft_warp, warp_ops.chamfer_distance):
        fn.__kwdefaults__["chunk_size"] = chunk
    cfg, _ = scaled_to_batch(get_preset(args.preset), args.batch)
    opts = RunOptions(out=out, steps=10**9, batch=args.batch, amp=args.amp, device=args.device)
    lpips, _ = build_lpips(args.lpips_net, random_backbone=True, device=args.device)
    torch.manual_seed(0)
    task = GeneratorTraining(cfg, Run(opts), lpips)
    real = torch.rand(args.batch, 3, cfg.size, cfg.size, device=args.device) * 2 - 1
    return task, real


def timed_steps(args, task, real, first: int, n: int) -> tuple[float, float]:
    """Median ms of the D and the G half over n steps (each half synchronised)."""
    d_ms, g_ms = [], []
    for it in range(first, first + n):
        sync(args.device)
        t0 = time.perf_counter()
        task.d_step(it, real)
        sync(args.device)
        t1 = time.perf_counter()
        task.g_step(it, real.shape[0])
        sync(args.device)
        d_ms.append((t1 - t0) * 1e3)
        g_ms.append((time.perf_counter() - t1) * 1e3)
    return sorted(d_ms)[len(d_ms) // 2], sorted(g_ms)[len(g_ms) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", action="store_true")
    ap.add_argument("--lpips-net", default="vgg")
    ap.add_argument("--chunks", default="4096,65536,1048576", help="chunk sizes to compare, comma-separated")
    ap.add_argument("--steps", type=int, default=16, help="timed steps per chunk size (after 4 warm-up steps)")
    ap.add_argument("--profile-steps", type=int, default=4)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="coordgan-profile-") as scratch:  # the runs' folder, removed after
        profile(args, Path(scratch))


def profile(args, scratch: Path) -> None:
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    print(f"{args.preset}, batch {args.batch}, {args.device}, amp {args.amp}, torch {torch.__version__}"
          + (f", {torch.cuda.get_device_name()}" if args.device.startswith("cuda") else ""))
    rows = []
    for chunk in (int(c) for c in args.chunks.split(",")):
        task, real = build(args, chunk, scratch)
        timed_steps(args, task, real, 0, 4)
        d_ms, g_ms = timed_steps(args, task, real, 4, args.steps)
        rows.append((chunk, d_ms, g_ms))
        print(f"chunk {chunk:>8}: D {d_ms:8.1f} ms  G {g_ms:8.1f} ms  step {d_ms + g_ms:8.1f} ms  "
              f"{args.batch / (d_ms + g_ms) * 1e3:8.1f} images/s  ({(rows[0][1] + rows[0][2]) / (d_ms + g_ms):.2f}x"
              f" the first)", flush=True)
    best = min(rows, key=lambda r: r[1] + r[2])[0]
    task, real = build(args, best, scratch)
    timed_steps(args, task, real, 0, 2)
    acts = [torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
    with torch.profiler.profile(activities=acts) as prof:
        timed_steps(args, task, real, 2, args.profile_steps)
    key = "self_cuda_time_total" if args.device.startswith("cuda") else "self_cpu_time_total"
    print(f"\nprofile of {args.profile_steps} steps at chunk {best}, by {key}:")
    print(prof.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=60))
    if args.device.startswith("cuda"):
        print("by self_cpu_time_total:")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=60))


if __name__ == "__main__":
    main()
