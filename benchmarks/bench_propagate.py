"""The whole `coordgan propagate` command, stage by stage: frames decoded -> masks written.

    python benchmarks/bench_propagate.py                       # celeba-128 size, 48 frames 128x128, defaults
    python benchmarks/bench_propagate.py --frames 96 --labels parts,255 --maps spread

Runs the real command (`coordgan propagate VIDEO --model ENCODER --ref FIRST.png --out DIR`, its
default options: batch 8, memory 3, tau 0.01) in a fresh process on a synthetic-faces video this
script writes, and reads where the time went from the run's summary.json (runtime.propagation.
observer.Observer): decode, preprocess, encoder (+ the coordinate warping network: one ONNX graph),
lookup, upsample + argmax, write (PNGs and the resume state). Encoders of the celeba-128 size,
random weights (seed 0), exported with `coordgan export onnx` through the export cache:

    spread     the export with its correspondence map replaced by a smooth warp of the canonical grid
               that moves with the frame (a trained model's maps spread like this), the encoder and
               the warping network still computed in full
    collapsed  the export as it is: random weights put every pixel within ~0.002 of one point

First masks: "parts" (the synthetic face's 8 part labels) or N (an N-label mosaic).
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STAGES = ("decode", "preprocess", "encoder", "lookup", "upsample_argmax", "write")


def spread_encoder(export: Path, out: Path) -> Path:
    """encoder.onnx whose corr_map is clip(grid + 0.12 sin(3.2 swapped grid + phase) + 1e-3 raw map), the
    phase 40 x the frame's mean structure code: smooth, spread over [-1, 1], moving with the frame."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(export / "encoder.onnx"))
    graph = model.graph
    for node in graph.node:
        node.output[:] = ["corr_raw" if o == "corr_map" else o for o in node.output]
    size = next(o for o in graph.output if o.name == "corr_map").type.tensor_type.shape.dim[2].dim_value
    g = np.linspace(-1, 1, size, dtype=np.float32)
    grid = np.stack(np.meshgrid(g, g, indexing="xy"))[None]
    consts = {"grid": grid, "swapped": grid[:, ::-1].copy(), "freq": np.float32(3.2), "amp": np.float32(0.12),
              "raw_w": np.float32(1e-3), "phase_w": np.float32(40.0), "shape4": np.array([-1, 1, 1, 1], np.int64),
              "axis1": np.array([1], np.int64), "lo": np.float32(-1.0), "hi": np.float32(1.0)}
    graph.initializer.extend(numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items())
    graph.node.extend([
        helper.make_node("ReduceMean", ["w_struct", "axis1"], ["phase1"], keepdims=1),  # opset 18: axes an input
        helper.make_node("Mul", ["phase1", "phase_w"], ["phase2"]),
        helper.make_node("Reshape", ["phase2", "shape4"], ["phase"]),
        helper.make_node("Mul", ["swapped", "freq"], ["arg0"]),
        helper.make_node("Add", ["arg0", "phase"], ["arg"]),
        helper.make_node("Sin", ["arg"], ["wave"]),
        helper.make_node("Mul", ["wave", "amp"], ["shift"]),
        helper.make_node("Add", ["grid", "shift"], ["warped"]),
        helper.make_node("Mul", ["corr_raw", "raw_w"], ["raw_small"]),
        helper.make_node("Add", ["warped", "raw_small"], ["summed"]),
        helper.make_node("Clip", ["summed", "lo", "hi"], ["corr_map"]),
    ])
    path = out / "encoder-spread.onnx"
    onnx.save(model, str(path))
    return path


def first_mask(kind: str, mask: np.ndarray) -> np.ndarray:
    if kind == "parts":
        return mask
    n = int(kind)  # an n-label mosaic of roughly square tiles
    side = int(np.ceil(np.sqrt(n)))
    h, w = mask.shape
    tiles = (np.arange(h)[:, None] * side // h) * side + (np.arange(w)[None] * side // w)
    return (tiles % n).astype(np.uint8)


def run(video: Path, encoder: Path, ref: Path, out: Path, extra: list[str], tree: Path = ROOT) -> dict:
    """`coordgan propagate` in a fresh process, its summary.json; tree: the checkout whose code runs."""
    cmd = [sys.executable, "-m", "coordgan.cli", "propagate", str(video), "--model", str(encoder), "--ref", str(ref),
           "--out", str(out), "--overwrite", "--device", "cpu", *extra]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(tree)})
    if done.returncode != 0:
        raise SystemExit(f"coordgan propagate failed:\n{done.stderr}")
    summary = json.loads((out / "summary.json").read_text())
    summary["command_s"] = time.perf_counter() - t0
    return summary


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="celeba-128")
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--size", type=int, default=128, help="frame size (square)")
    parser.add_argument("--maps", default="spread,collapsed", help="spread, collapsed, or both")
    parser.add_argument("--labels", default="parts", help="first masks: parts and/or label counts, e.g. parts,255")
    parser.add_argument("--repeat", type=int, default=1, help="runs per case (the fastest is shown)")
    parser.add_argument("--extra", default="", help="more propagate options, e.g. '--batch 16'")
    parser.add_argument("--warp-grid", type=int, default=None, help="export the encoder with --warp-grid N (the "
                        "approximate, faster warping network) instead of exactly")
    parser.add_argument("--int8", action="store_true", help="export the encoder with --int8 (the warping "
                        "network's hidden layer in int8, approximate)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="coordgan-bench-propagate-") as work:
        measure(args, Path(work))


def measure(args, work: Path) -> None:
    from coordgan.data.synthetic_faces import make_sequence
    from export.cache import ModelSource
    from runtime.io.masks import DAVIS_PALETTE, write_mask
    from runtime.io.video import VideoWriter

    source = ModelSource(preset=args.preset, seed=0, progress=lambda m: print(f"  {m}", flush=True))
    export = source.onnx_dir("encoder")
    if args.warp_grid or args.int8:
        from export.onnx_export import ExportOptions, export_onnx

        options = ExportOptions(only="encoder", warp_grid=args.warp_grid, int8=args.int8, verify_batches=(1,))
        export = export_onnx(source.checkpoint(), work / "export", options).directory
    encoders = {"collapsed": export / "encoder.onnx", "spread": spread_encoder(export, work)}
    frames, masks = make_sequence(args.frames, args.size, seed=7)
    video = work / "faces.mp4"
    with VideoWriter(video, fps=12) as writer:
        for frame in frames:
            writer.write(frame)
    how = " ".join([f"--warp-grid {args.warp_grid}"] * bool(args.warp_grid) + ["--int8"] * args.int8) or "exact"
    print(f"{args.frames} frames {args.size}x{args.size}, {args.preset} encoder ({how}), propagate defaults "
          f"{args.extra or ''}".rstrip())
    header = ["maps", "labels", "frames/s", "ms/frame"] + [f"{s} ms" for s in STAGES]
    rows = []
    for maps in args.maps.split(","):
        for labels in args.labels.split(","):
            ref = work / f"first-{labels}.png"
            write_mask(ref, first_mask(labels, masks[0]), DAVIS_PALETTE)
            best = None
            for _ in range(args.repeat):
                s = run(video, encoders[maps], ref, work / f"out-{maps}-{labels}", args.extra.split())
                if best is None or s["frames_per_s"] > best["frames_per_s"]:
                    best = s
            n = best["frames_processed"]
            per = {k: 1e3 * best["seconds"][k] / n for k in STAGES}
            rows.append([maps, labels, f"{best['frames_per_s']:.2f}", f"{1e3 * best['seconds']['total'] / n:.1f}",
                         *(f"{per[k]:.1f}" for k in STAGES)])
            for warning in best.get("warnings", []):
                print(f"  ({maps}, {labels}) warning: {warning[:100]}...")
    from runtime.bench.report import text_table

    print(text_table(rows, header))
    print("(ms/frame: the run's wall time per frame; the stage columns sum to about it; encoder = the exported "
          "encoder and warping network, one ONNX graph)")


if __name__ == "__main__":
    main()
