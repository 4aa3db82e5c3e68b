"""`coordgan demo`: the main job end to end on the CPU (coordgan/demo.py), in under two minutes on two cores."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from coordgan.cli.common import frames_bar
from coordgan.demo import SHIPPED_CKPT
from runtime.terminal import console, tagged


NO_SHIPPED_CKPT = ("No trained checkpoint ships yet (checkpoints/README.md says why and how to train one): pass "
                   "a checkpoint with an encoder as --ckpt CKPT (from `coordgan train`, then `coordgan "
                   "train-encoder`), or run `make demo`, which meanwhile draws the tiny preset's swap grid.")


def demo(
    ckpt: Path = typer.Option(SHIPPED_CKPT, "--ckpt", help="Checkpoint (default: the shipped tiny one)."),
    out: Path = typer.Option(Path("demo-out"), "--out", help="Output folder (an earlier demo's outputs are replaced; other files of their names are refused)."),
    frames: int = typer.Option(48, "--frames", help="Frames in the synthetic video."),
    size: int = typer.Option(128, "--size", help="Frame size in pixels."),
    seed: int = typer.Option(7, "--seed", help="Seed of the synthetic face and its motion."),
    memory: int = typer.Option(3, "--memory", help="Recent propagated frames kept as references."),
):
    """Propagate a synthetic face's part masks through a video and score them against ground truth."""
    from coordgan.data.synthetic_faces import PART_NAMES
    from coordgan.demo import DemoOptions, check_out, run_demo
    from export.cache import encoder_onnx
    from runtime.errors import CoordGANError
    from runtime.propagation.model import open_model

    options = DemoOptions(frames=frames, size=size, seed=seed, memory=memory)
    options.validate()  # all of them before the export: none is found out after minutes of work
    check_out(out)
    if not ckpt.is_file():
        raise CoordGANError(NO_SHIPPED_CKPT if ckpt == SHIPPED_CKPT else
                            f"Checkpoint {ckpt} does not exist; pass one with --ckpt.")
    out_console = console()
    started = time.perf_counter()
    encoder = encoder_onnx(ckpt, cache=out / "export", progress=out_console.print)
    out_console.print(f"{frames} synthetic-faces frames at {size}x{size} (seed {seed}), propagated with {encoder}")
    with open_model(str(encoder), backend="onnxruntime", device="cpu") as model, \
            frames_bar(out_console, "propagating") as on_frame:
        result = run_demo(model, out, options, checkpoint=str(ckpt), on_frame=on_frame,
                          on_note=lambda text: out_console.print(tagged("warning", f": {text}"), soft_wrap=True))
    _report(out_console, result, PART_NAMES)
    outputs = result["outputs"]
    out_console.print(f"picture {outputs['picture']}, video {outputs['video']}, ground truth "
                      f"{outputs['ground_truth']}, masks {outputs['masks']}, overlay {outputs['overlay']}, scores "
                      f"{out / 'demo.json'} ({time.perf_counter() - started:.1f} s in all)")


def _report(out, result: dict, part_names) -> None:
    from rich.table import Table

    table = Table(title="Part masks vs ground truth (DAVIS J and F, frames 1..n-2, mean over parts)")
    for col in ("method", "J mean", "F mean"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for name in ("propagated", "identity baseline"):
        table.add_row(name, f"{result[name]['J_mean']:.3f}", f"{result[name]['F_mean']:.3f}")
    out.print(table)
    out.print(f"{result['frames']} frames at {result['frames_per_s']} frames/s (ONNX Runtime, CPU); parts: "
              f"{', '.join(part_names[1:])}")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
