"""ONNX Runtime (CPU) vs PyTorch eager (CPU): celeba-128 encoder + coordinate warping network.

    python benchmarks/bench_export.py                      # batch 1 and 8, 2 threads each
    python benchmarks/bench_export.py --batches 1 8 --iters 7 --threads 2

image (N, 3, 128, 128) -> correspondence map (N, 2, 128, 128), the mask-propagation path. Random
weights (seed 0), not a trained checkpoint: speed does not depend on the values. The ONNX model is
made by `coordgan export onnx --only encoder` (verified against PyTorch) in a child process, so the
timing process holds nothing of the exporter. Same thread count on both sides
(torch.set_num_threads, ORT intra_op_num_threads), ORT tuned for latency: ORT_ENABLE_ALL graph
optimizations, sequential execution, no spin-waiting (spinning threads would steal the cores from
the PyTorch runs interleaved with them). After warm-up, the two run alternately, one call each per
round, so background load on a shared machine hits both alike; the table shows medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GOAL = 0.6


def make_export(workdir: Path, preset: str) -> tuple[Path, Path]:
    import torch

    from coordgan.checkpoint import save
    from coordgan.config import get_preset
    from coordgan.models import build

    torch.manual_seed(0)
    cfg = get_preset(preset)
    ckpt = save(workdir / f"{preset}-random.safetensors", cfg, build(cfg, which=("g", "e")))
    out = workdir / "onnx"
    cmd = [sys.executable, "-m", "coordgan.cli", "export", "onnx", str(ckpt), "--out", str(out), "--only", "encoder"]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return ckpt, out / "encoder.onnx"


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="celeba-128")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--iters", type=int, default=7, help="timed rounds per batch size (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import numpy as np
    import torch

    from coordgan.checkpoint import load

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        print(f"exporting {args.preset} encoder + warp (random weights, seed 0) ...", flush=True)
        ckpt, onnx_path = make_export(Path(tmp), args.preset)
        ck = load(ckpt)
        encoder, generator = ck.encoder, ck.generator
        session = ort_session(onnx_path, args.threads)
        base = ck.config.base_size

        rows = []
        load_before = os.getloadavg()[0]
        for batch in args.batches:
            image = torch.rand(batch, 3, base, base) * 2 - 1
            feed = {"image": image.numpy()}

            def run_torch():
                with torch.no_grad():
                    return generator.warp(encoder(image)[0])

            def run_ort():
                return session.run(["corr_map"], feed)[0]

            diff = float(np.abs(run_ort() - run_torch().numpy()).max())
            for _ in range(args.warmup):
                run_torch(), run_ort()
            t_torch, t_ort = [], []
            for _ in range(args.iters):
                t_torch.append(timed(run_torch))
                t_ort.append(timed(run_ort))
            rows.append((batch, statistics.median(t_torch), statistics.median(t_ort), diff))

    print()
    print(f"{args.preset} encoder + warp, image -> correspondence map, CPU, {args.threads} threads each, "
          f"median of {args.iters} alternating rounds (random weights)")
    print(f"torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}, "
          f"{os.cpu_count()} CPUs, load average before/after timing {load_before:.2f}/{os.getloadavg()[0]:.2f}")
    header = f"| batch | PyTorch eager (ms) | ONNX Runtime (ms) | ORT/PyTorch | goal <= {GOAL} | max abs diff |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for batch, tt, to, diff in rows:
        ratio = to / tt
        print(f"| {batch} | {tt:.1f} | {to:.1f} | {ratio:.2f} | {'met' if ratio <= GOAL else 'missed'} | {diff:.1e} |")


if __name__ == "__main__":
    main()
