"""The opt-in approximations of the encoder, side by side with the exact export in one run: speed and
what they cost in quality.

    python benchmarks/bench_fast.py                             # celeba-128 and tiny, warp grids 64/32 and 16/8
    python benchmarks/bench_fast.py --preset celeba-128 --warp-grids 64

For each preset (random weights, seed 0, or --ckpt) the encoder is exported exactly, with
`--warp-grid N` (the coordinate warping network on an N x N grid, its map upsampled bilinearly) and
with `--int8` (the warping network's hidden layer in int8).
On a synthetic-faces video with ground-truth part masks (48 frames, the model's grid size):

    encoder ms    the exported encoder + warping network per frame (batch 8, ONNX Runtime, CPU)
    frames/s      `propagate_sequence` with the defaults (memory 3), decode to PNGs
    |d corr|      max and mean difference of the correspondence maps to the exact export's
    masks agree   share of mask pixels equal to the exact export's masks (the first frame excluded)
    J             mean DAVIS J of the part masks against the ground truth (frames 1..n-2)

Random celeba-128 weights collapse the maps (every pixel within ~0.003 of one point), so its
quality columns say little; the tiny preset's initialisation spreads them, so its columns show what
the approximation does to maps that vary. A trained checkpoint (--ckpt) is the real test.

--int8-layers adds rows that put other layer sets in int8, to check `--int8`'s choice (the warping
network's hidden Gemm and its Relu) on a model: the hidden Gemm alone, the same pair, every Gemm,
every Gemm and Conv. These are calibrated through the whole encoder on the benchmark's own frames (a
best case for them), not on structure codes as `--int8` is; they are not an export option.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def encoder_ms(model, frames: np.ndarray, repeat: int = 2) -> float:
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        model.correspondence(frames)
        best = min(best, time.perf_counter() - t0)
    return 1e3 * best / len(frames)


# row name -> (op types to quantize, how many of the warping network's hidden (Gemm, Relu) to restrict
# them to; 0: every node of those types)
INT8_LAYERS = {
    "hidden Gemm": (["Gemm"], 1),
    "hidden Gemm+Relu": (["Gemm", "Relu"], 2),
    "every Gemm": (["Gemm"], 0),
    "every Gemm+Conv": (["Gemm", "Conv"], 0),
}


def int8_layer_variants(exact_dir: Path, images: np.ndarray, folder: Path) -> dict[str, Path]:
    """Copies of the exact export with INT8_LAYERS' layer sets in int8 (`--int8`'s scheme), calibrated
    on `images` (N, 3, H, W) in [-1, 1]."""
    import shutil

    import onnx

    from export.quantize import calibration_batches, quantize_static_qdq, warp_hidden_layer

    model = onnx.load(str(exact_dir / "encoder.onnx"))
    hidden = list(warp_hidden_layer(model))
    variants = {}
    for name, (ops, restrict) in INT8_LAYERS.items():
        out = folder / f"int8-{name.replace(' ', '-').replace('+', '-')}"
        shutil.copytree(exact_dir, out, dirs_exist_ok=True)
        quantized = quantize_static_qdq(model, calibration_batches(images, "image"), ops, hidden[:restrict] or None)
        onnx.save(quantized, out / "encoder.onnx")
        variants[f"int8 {name}"] = out / "encoder.onnx"
    return variants


def run_preset(preset: str | None, ckpt: Path | None, grids: list[int], frames_n: int, work: Path,
               int8_layers: bool = False) -> list[list[str]]:
    from coordgan.data.synthetic_faces import make_sequence
    from export.cache import ModelSource
    from export.onnx_export import ExportOptions, export_onnx
    from runtime.davis.evaluate import evaluate_sequence
    from runtime.io.masks import DAVIS_PALETTE, read_mask, write_mask
    from runtime.io.video import VideoWriter, open_frames
    from runtime.propagation.model import open_model
    from runtime.propagation.sequence import PropagateOptions, Reference, propagate_sequence

    source = ModelSource(ckpt=ckpt, preset=None if ckpt else preset, seed=0)
    ck = source.checkpoint()
    size = ck.config.base_size
    name = preset or ck.config.name
    folder = work / name
    exports = {"exact": source.onnx_dir("encoder") / "encoder.onnx"}
    for g in grids:
        out = export_onnx(ck, folder / f"warp{g}", ExportOptions(only="encoder", warp_grid=g, verify_batches=(1,),
                                                                 overwrite=True)).directory
        exports[f"--warp-grid {g}"] = out / "encoder.onnx"
    out = export_onnx(ck, folder / "int8", ExportOptions(only="encoder", int8=True, verify_batches=(1,),
                                                         overwrite=True)).directory
    exports["--int8"] = out / "encoder.onnx"
    frames, masks = make_sequence(frames_n, size, seed=7)
    video = folder / "faces.mp4"
    with VideoWriter(video, fps=12) as writer:
        for frame in frames:
            writer.write(frame)
    for t, mask in enumerate(masks):
        (folder / "gt").mkdir(exist_ok=True)
        write_mask(folder / "gt" / f"{t:05d}.png", mask, DAVIS_PALETTE)
    warmup = folder / "warmup.mp4"
    with VideoWriter(warmup, fps=12) as writer:
        for frame in frames[:4]:
            writer.write(frame)
    decoded = np.stack([f for _, _, f in open_frames(video).frames()])
    if int8_layers:
        from runtime.propagation.preprocess import to_unit_range

        exports |= int8_layer_variants(exports["exact"].parent, to_unit_range(decoded), folder)
    with open_model(str(exports["exact"]), backend="onnxruntime", device="cpu") as model:
        # first-call costs (compiling or loading the lookup's kernels) are not the first row's
        propagate_sequence(model, open_frames(warmup), [Reference(masks[0])], folder / "warmup",
                           PropagateOptions(overwrite=True))
    rows, exact_maps, exact_masks = [], None, None
    for variant, path in exports.items():
        with open_model(str(path), backend="onnxruntime", device="cpu") as model:
            ms = encoder_ms(model, decoded)
            maps = model.correspondence(decoded)
            out = folder / f"masks-{variant.replace(' ', '').replace('-', '')}"
            summary = propagate_sequence(model, open_frames(video), [Reference(masks[0])], out,
                                         PropagateOptions(overwrite=True))
        got = np.stack([read_mask(out / f"{t:05d}.png")[0] for t in range(frames_n)])
        if exact_maps is None:
            exact_maps, exact_masks, exact_ms = maps, got, ms
        diff = np.abs(maps - exact_maps)
        j = evaluate_sequence(out, folder / "gt")["J_mean"]
        rows.append([name, variant, f"{ms:.1f}", f"{exact_ms / ms:.2f}x", f"{summary['frames_per_s']:.2f}",
                     f"{diff.max():.2e}", f"{diff.mean():.2e}", f"{100 * (got[1:] == exact_masks[1:]).mean():.2f}%",
                     f"{j:.3f}", f"{maps.std(axis=(2, 3)).mean():.3f}"])
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="celeba-128,tiny", help="presets, comma-separated (random weights)")
    parser.add_argument("--ckpt", type=Path, default=None, help="a checkpoint instead of random weights")
    parser.add_argument("--warp-grids", default=None, help="per preset: grid sizes, e.g. 64,32 (default: 1/2 "
                        "and 1/4 of the model's grid)")
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--int8-layers", action="store_true", help="also rows with other layer sets in int8")
    args = parser.parse_args(argv)

    import coordgan
    from coordgan.config import get_preset

    rows = []
    with tempfile.TemporaryDirectory(prefix="coordgan-bench-fast-") as work:  # exports and outputs, removed after
        for preset in ([None] if args.ckpt else args.preset.split(",")):
            base = (get_preset(preset) if preset else coordgan.load(args.ckpt).config).base_size
            grids = [int(g) for g in args.warp_grids.split(",")] if args.warp_grids else [base // 2, base // 4]
            rows += run_preset(preset, args.ckpt, grids, args.frames, Path(work), args.int8_layers)
    header = ["model", "encoder", "encoder ms", "speed", "frames/s", "max|d corr|", "mean|d corr|", "masks agree",
              "J", "map spread"]
    from runtime.bench.report import text_table

    print(text_table(rows, header))
    print("(speed: exact encoder ms / this one's; masks agree: pixels equal to the exact export's masks, frames 1..n-1;"
          " J: DAVIS J vs the ground-truth parts; map spread: std of the coordinates, about 0.58 for the identity)")


if __name__ == "__main__":
    main()
