"""`coordgan demo`: the main job end to end on CPU, in under two minutes on two cores.

A synthetic-faces video with ground-truth part masks is written as an mp4; the shipped tiny
checkpoint is exported to ONNX (once, cached under the output folder); the first frame's parts
are propagated through the decoded video with ONNX Runtime on the CPU; mean J and F against the
ground truth are printed beside the identity baseline (the first-frame mask copied to every
frame), with frames/s. Outputs in --out: faces.mp4, gt/, masks/ (+ summary.json), identity/,
overlay.mp4, demo.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from runtime.errors import CoordGANError
from runtime.fileio import atomic_write

SHIPPED_CKPT = Path(__file__).resolve().parents[1] / "checkpoints" / "tiny-synthetic-faces.safetensors"


def _write_inputs(out: Path, frames, masks) -> Path:
    from runtime.io.masks import DAVIS_PALETTE, write_mask
    from runtime.io.video import VideoWriter

    video = out / "faces.mp4"
    with VideoWriter(video, fps=12) as writer:
        for frame in frames:
            writer.write(frame)
    for folder, labels in (("gt", masks), ("identity", [masks[0]] * len(masks))):
        (out / folder).mkdir(parents=True, exist_ok=True)
        for stale in (out / folder).glob("*.png"):  # an earlier, longer demo's frames would be scored too
            stale.unlink()
        for i, mask in enumerate(labels):
            write_mask(out / folder / f"{i:05d}.png", mask, DAVIS_PALETTE)
    return video


def demo(
    ckpt: Path = typer.Option(SHIPPED_CKPT, "--ckpt", help="Checkpoint (default: the shipped tiny one)."),
    out: Path = typer.Option(Path("demo-out"), "--out", help="Output folder (its demo outputs are replaced)."),
    frames: int = typer.Option(48, "--frames", help="Frames in the synthetic video."),
    size: int = typer.Option(128, "--size", help="Frame size in pixels."),
    seed: int = typer.Option(7, "--seed", help="Seed of the synthetic face and its motion."),
    memory: int = typer.Option(3, "--memory", help="Recent propagated frames kept as references."),
):
    """Propagate a synthetic face's part masks through a video and score them against ground truth."""
    from rich.console import Console

    from coordgan.data.synthetic_faces import PART_NAMES, make_sequence
    from coordgan.propagate_cli import export_checkpoint, frames_progress, open_model
    from runtime.davis.evaluate import evaluate_sequence
    from runtime.propagation.sequence import PropagateOptions, Reference, propagate_sequence
    from runtime.io.video import open_frames

    console = Console()
    if not ckpt.is_file():
        raise CoordGANError(f"Checkpoint {ckpt} does not exist; pass one with --ckpt.")
    if frames < 3 or size < 32:
        raise CoordGANError(f"The demo needs --frames 3 or more (J and F skip the first and last) and --size 32 "
                            f"or more, got {frames} and {size}.")
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo.json").unlink(missing_ok=True)  # written last: only a finished run's scores are there
    video_frames, gt = make_sequence(frames, size, seed)
    video = _write_inputs(out, video_frames, gt)
    console.print(f"{frames} synthetic-faces frames at {size}x{size} (seed {seed}) -> {video}, ground truth "
                  f"{out / 'gt'}")
    encoder = export_checkpoint(ckpt, console, cache=out / "export")
    options = PropagateOptions(memory=memory, overlay=out / "overlay.mp4", overwrite=True)
    with open_model(str(encoder), "onnxruntime", None, "cpu", options.batch, console) as model:
        progress, task = frames_progress(console), []

        def on_frame(done, total):
            if not task:
                progress.start()
                task.append(progress.add_task("propagating", total=total))
            progress.update(task[0], completed=done, total=total)

        try:
            summary = propagate_sequence(model, open_frames(video), [Reference(gt[0])], out / "masks", options,
                                         on_frame=on_frame)
        finally:
            if task:
                progress.stop()
    scores = {name: evaluate_sequence(out / folder, out / "gt")
              for name, folder in (("propagated", "masks"), ("identity baseline", "identity"))}
    _report(console, scores, summary, PART_NAMES)
    result = {"checkpoint": str(ckpt), "frames": frames, "size": size, "seed": seed, "memory": memory,
              "frames_per_s": summary["frames_per_s"], "wall_s": round(time.perf_counter() - started, 1),
              **{name: {"J_mean": s["J_mean"], "F_mean": s["F_mean"]} for name, s in scores.items()}}
    with atomic_write(out / "demo.json", "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    console.print(f"masks {out / 'masks'}, overlay {options.overlay}, scores {out / 'demo.json'} "
                  f"({result['wall_s']} s in all)")


def _report(console, scores: dict, summary: dict, part_names) -> None:
    from rich.table import Table

    table = Table(title="Part masks vs ground truth (DAVIS J and F, frames 1..n-2, mean over parts)")
    for col in ("method", "J mean", "F mean"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for name, s in scores.items():
        table.add_row(name, f"{s['J_mean']:.3f}", f"{s['F_mean']:.3f}")
    console.print(table)
    console.print(f"{summary['frames']} frames at {summary['frames_per_s']} frames/s (ONNX Runtime, CPU); parts: "
                  f"{', '.join(part_names[1:])}")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
