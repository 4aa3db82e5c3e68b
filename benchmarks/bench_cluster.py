"""`coordgan propagate` on a dataset in-process against `--cluster local` with 1 and 2 Ray workers.

    python benchmarks/bench_cluster.py                          # 12 sequences x 16 frames 128x128, celeba-128
    python benchmarks/bench_cluster.py --sequences 12 --frames 24 --rows in-process,1x2,2x1 --repeat 2

Each row runs in a fresh process on a DAVIS-layout dataset of synthetic-face sequences this script
writes, with the celeba-128 encoder (random weights, seed 0, exported through the export cache)
whose correspondence maps are made to spread like a trained model's (as bench_propagate.py's
"spread"). Rows: `in-process` (no --cluster: the command's own library calls; its threads are the
CPUs the process may use) and WxT = `coordgan propagate --cluster local --workers W
--cpus-per-worker T` (T threads per worker). Rows are interleaved over the repeats, so a busy spell
on a shared machine hits every row alike. frames/s after start-up: in-process, the frames over the
time from the model being open to the last sequence's end; on the cluster, cluster_summary.json's,
from every worker holding its model to the last sequence's end. start-up: the local Ray instance
started and every worker's model open. Every row's masks are checked byte for byte against the
first row's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def dataset(root: Path, sequences: int, frames: int, size: int) -> Path:
    from PIL import Image

    from coordgan.data.synthetic_faces import make_sequence
    from runtime.io.masks import DAVIS_PALETTE, write_mask

    for i in range(sequences):
        seq = f"seq{i:02d}"
        images, notes = root / "JPEGImages" / "480p" / seq, root / "Annotations" / "480p" / seq
        images.mkdir(parents=True)
        notes.mkdir(parents=True)
        video, masks = make_sequence(frames, size, seed=100 + i)
        for t, frame in enumerate(video):
            Image.fromarray(frame).save(images / f"{t:05d}.jpg", quality=95)
        write_mask(notes / "00000.png", masks[0], DAVIS_PALETTE)
    return root


def run(data: Path, encoder: Path, out: Path, extra: list[str]) -> float:
    """The command's wall seconds."""
    cmd = [sys.executable, "-m", "coordgan.cli", "propagate", str(data), "--model", str(encoder), "--out", str(out),
           "--overwrite", "--device", "cpu", *extra]
    tick = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - tick


# What `coordgan propagate DATA --model ENC --out OUT --device cpu` does, timed from the model being open to
# the last sequence's end (the cluster rows' "after start-up" window: inputs opened, every sequence, summaries).
IN_PROCESS = """
import json, sys, time
from runtime.propagation.jobs import plan, run_jobs
from runtime.propagation.model import open_model
from runtime.propagation.sequence import PropagateOptions
options = PropagateOptions(overwrite=True)
with open_model(sys.argv[2], device="cpu", batch=options.batch) as model:
    tick = time.perf_counter()
    frames = sum(s["frames_processed"] for _, s in run_jobs(model, plan(sys.argv[1], sys.argv[3]), options))
    print(json.dumps([frames, time.perf_counter() - tick]))
"""


def masks(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.png"))}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="celeba-128")
    parser.add_argument("--sequences", type=int, default=12)
    parser.add_argument("--frames", type=int, default=16, help="frames per sequence")
    parser.add_argument("--size", type=int, default=128, help="frame size (square)")
    parser.add_argument("--rows", default="in-process,1x2,1x1,2x1", help="in-process and WORKERSxTHREADS rows")
    parser.add_argument("--repeat", type=int, default=1, help="runs per row (the fastest after start-up is shown)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="coordgan-bench-cluster-") as work:  # removed after
        measure(args, Path(work))


def measure(args, work: Path) -> None:
    from bench_propagate import spread_encoder
    from export.cache import ModelSource
    from runtime.bench.report import text_table
    from runtime.devices import cpu_threads

    source = ModelSource(preset=args.preset, seed=0, progress=lambda m: print(f"  {m}", flush=True))
    encoder = spread_encoder(source.onnx_dir("encoder"), work)
    data = dataset(work / "davis", args.sequences, args.frames, args.size)
    total = args.sequences * args.frames
    print(f"{args.sequences} sequences x {args.frames} frames {args.size}x{args.size} ({total} frames), {args.preset} "
          f"encoder (spread maps), propagate defaults, {os.cpu_count()} CPUs")
    best, reference = {}, None
    for _ in range(args.repeat):  # rows interleaved, so a busy spell on the machine hits every row alike
        for row in args.rows.split(","):
            out = work / f"out-{row}"
            if row == "in-process":
                tick = time.perf_counter()
                done = subprocess.run([sys.executable, "-c", IN_PROCESS, str(data), str(encoder), str(out)], cwd=ROOT,
                                      capture_output=True, text=True, check=True)
                wall = time.perf_counter() - tick
                frames, seconds = json.loads(done.stdout.splitlines()[-1])
                fps, startup, threads, workers = frames / seconds, None, cpu_threads(), "-"
            else:
                w, t = (int(x) for x in row.split("x"))
                wall = run(data, encoder, out, ["--cluster", "local", "--workers", str(w), "--cpus-per-worker", str(t)])
                record = json.loads((out / "cluster_summary.json").read_text())
                frames, fps, startup = record["frames_processed"], record["frames_per_s"], record["startup_s"]
                workers, threads = str(w), t
            assert frames == total, (row, frames)
            if reference is None:
                reference = masks(out)
            elif masks(out) != reference:
                raise SystemExit(f"{row}: masks differ from the first row's")
            print(f"  {row}: {fps:.2f} frames/s" + (f", start-up {startup:.1f} s" if startup else ""), flush=True)
            if row not in best or fps > best[row][2]:
                best[row] = (workers, threads, fps, startup, wall)
    rows = [[row, w, str(t), f"{fps:.2f}", "-" if s is None else f"{s:.1f}", f"{wall:.1f}"]
            for row, (w, t, fps, s, wall) in best.items()]
    print(text_table(rows, ["run", "workers", "threads/worker", "frames/s after start-up", "start-up s",
                            "command s"]))
    print("(masks byte-identical across rows; command s: the whole command in a fresh process, imports included)")


if __name__ == "__main__":
    main()
