"""The main job end to end, as `coordgan demo` runs it: a synthetic-faces video with ground-truth part
masks, the first frame's parts propagated through it, mean J and F beside the identity baseline.

:func:`run_demo` takes an opened correspondence model (the CLI opens the exported encoder of a
checkpoint on ONNX Runtime, CPU). Outputs in `out`: faces.mp4, gt/, masks/ (+ summary.json),
identity/ (the first-frame mask copied to every frame), overlay.mp4, strip.png (a few frames with
the ground truth, the identity baseline and the propagated masks side by side), and demo.json last.
A run first removes an earlier demo's outputs, and a failed or interrupted one removes its own: a
folder with demo.json holds one whole run, and one without it holds none. Only a demo's own outputs are
ever removed: a run writes the marker .coordgan-demo before anything else (and a failed one removes it
last), so a folder of those names that no demo made (a project's masks/) is refused, never deleted.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from runtime.errors import CoordGANError

SHIPPED_CKPT = Path(__file__).resolve().parents[1] / "checkpoints" / "tiny-synthetic-faces.safetensors"
OUTPUTS = ("demo.json", "faces.mp4", "gt", "identity", "masks", "overlay.mp4", "strip.png")
MARKER = ".coordgan-demo"  # written first by every run: what is beside it under OUTPUTS' names is a demo's


@dataclass(frozen=True)
class DemoOptions:
    frames: int = 48  # frames of the synthetic video
    size: int = 128  # frame size in pixels
    seed: int = 7  # of the synthetic face and its motion
    memory: int = 3  # recent propagated frames kept as references

    def validate(self) -> None:
        """Every option, before the export and the video: a bad one must not cost a whole run."""
        if self.frames < 3 or self.size < 32:
            raise CoordGANError(f"The demo needs --frames 3 or more (J and F skip the first and last) and --size 32 "
                                f"or more, got {self.frames} and {self.size}.")
        if self.size % 2:  # yuv420p pads an odd side, and masks one pixel larger than the truth cannot be scored
            raise CoordGANError(f"--size must be even (the demo video's codec needs even sides), got {self.size}.")
        self.propagate_options(None).validate()

    def propagate_options(self, overlay):
        from runtime.propagation.sequence import PropagateOptions

        return PropagateOptions(memory=self.memory, overlay=overlay, overwrite=True)


def check_out(out) -> None:
    """The demo's output folder: refused up front when a file holds its name, or when it holds files of the
    demo's output names that no demo made."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CoordGANError(f"--out {out} is a file; give a folder for the demo's outputs.")
    if out.is_dir():
        check_ours(out)


def write_inputs(out: Path, options: DemoOptions):
    """faces.mp4 and its ground truth gt/ (and identity/, the first mask repeated); (video, frames, masks)."""
    from coordgan.data.synthetic_faces import make_sequence
    from runtime.io.masks import DAVIS_PALETTE, write_mask
    from runtime.io.video import VideoWriter

    frames, masks = make_sequence(options.frames, options.size, options.seed)
    video = out / "faces.mp4"
    with VideoWriter(video, fps=12) as writer:
        for frame in frames:
            writer.write(frame)
    for folder, labels in (("gt", masks), ("identity", [masks[0]] * len(masks))):
        (out / folder).mkdir(parents=True)
        for i, mask in enumerate(labels):
            write_mask(out / folder / f"{i:05d}.png", mask, DAVIS_PALETTE)
    return video, frames, masks


STRIP_ROWS = ("frame", "ground truth", "identity baseline", "propagated")


def write_strip(path: Path, frames, truth, propagated, columns: int = 5) -> None:
    """A PNG to look at: a few frames, first to last, with the ground truth, the identity baseline (the
    first mask everywhere) and the propagated masks laid over them, one row each, named on the left."""
    import numpy as np
    from PIL import Image, ImageDraw

    from coordgan.visualize import tile
    from runtime.fileio import atomic_write
    from runtime.io.masks import DAVIS_PALETTE, overlay

    picks = np.unique(np.linspace(0, len(frames) - 1, min(columns, len(frames))).round().astype(int))
    cells = [[frames[i] for i in picks]]
    for masks in (truth, [truth[0]] * len(truth), propagated):
        cells.append([overlay(frames[i], masks[i], DAVIS_PALETTE) for i in picks])
    cell = max(frames[0].shape[0], 96)
    grid = tile(cells, cell)
    margin = 120
    picture = Image.new("RGB", (grid.shape[1] + margin, grid.shape[0]), "white")
    picture.paste(Image.fromarray(grid), (margin, 0))
    draw = ImageDraw.Draw(picture)
    for row, name in enumerate(STRIP_ROWS):
        draw.text((6, 2 + row * (cell + 2) + cell // 2 - 6), name, fill="black")
    for col, i in enumerate(picks):
        draw.text((margin + 6 + col * (cell + 2), 6), f"frame {i}", fill="white")
    with atomic_write(path) as f:
        picture.save(f, format="PNG")


def run_demo(model, out, options: DemoOptions = DemoOptions(), *, checkpoint: str = "",
             on_frame: Callable[[int, int | None], None] | None = None,
             on_note: Callable[[str], None] | None = None) -> dict:
    """Write the inputs, propagate, score; returns (and writes as demo.json) the result."""
    options.validate()
    check_out(out)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("Outputs of `coordgan demo`: the next demo here replaces them.\n")
    _remove_outputs(out)  # demo.json first: never beside another run's files
    try:
        return _run(model, out, options, checkpoint, on_frame, on_note)
    except BaseException:  # Ctrl-C too: no half of a demo left to mistake for one
        _remove_outputs(out)
        (out / MARKER).unlink(missing_ok=True)  # last: a run killed before this is still known as ours
        raise


def check_ours(out: Path) -> None:
    """Refuse a folder whose files of the demo's output names no demo made (`--out .` in a project with
    masks/): they would be deleted. An empty folder of such a name is no loss."""
    if (out / MARKER).is_file() or _demo_json(out / "demo.json"):  # a demo's (demo.json: one from before the marker)
        return
    for name in OUTPUTS:
        path = out / name
        if path.is_symlink() or (path.exists() and not (path.is_dir() and not any(path.iterdir()))):
            kind = "folder" if path.is_dir() and not path.is_symlink() else "file"
            raise CoordGANError(f"--out {out} already holds the {kind} {name}, which no earlier demo made; give "
                                f"another --out (a demo replaces {', '.join(OUTPUTS)} in it).")


def _demo_json(path: Path) -> bool:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and {"checkpoint", "frames", "outputs", "identity baseline"} <= record.keys()


def _remove_outputs(out: Path) -> None:
    for name in OUTPUTS:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _run(model, out: Path, options: DemoOptions, checkpoint, on_frame, on_note) -> dict:
    from runtime.davis.evaluate import evaluate_sequence
    from runtime.fileio import atomic_write
    from runtime.io.masks import read_mask
    from runtime.io.video import open_frames
    from runtime.propagation.observer import CallbackObserver
    from runtime.propagation.sequence import Reference, propagate_sequence

    started = time.perf_counter()
    video, frames, truth = write_inputs(out, options)
    propagate = options.propagate_options(out / "overlay.mp4")
    summary = propagate_sequence(model, open_frames(video), [Reference(truth[0])], out / "masks", propagate,
                                 observer=CallbackObserver(on_frame, on_note))
    scores = {name: evaluate_sequence(out / folder, out / "gt")
              for name, folder in (("propagated", "masks"), ("identity baseline", "identity"))}
    propagated = [read_mask(path)[0] for path in sorted((out / "masks").glob("*.png"))]
    write_strip(out / "strip.png", frames, truth, propagated)
    result = {"checkpoint": checkpoint, "frames": options.frames, "size": options.size, "seed": options.seed,
              "memory": options.memory, "frames_per_s": summary["frames_per_s"],
              "wall_s": round(time.perf_counter() - started, 1),
              **{name: {"J_mean": s["J_mean"], "F_mean": s["F_mean"]} for name, s in scores.items()},
              "outputs": {"video": str(video), "ground_truth": str(out / "gt"), "masks": str(out / "masks"),
                          "overlay": str(propagate.overlay), "picture": str(out / "strip.png")}}
    with atomic_write(out / "demo.json", "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    return result
