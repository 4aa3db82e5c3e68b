"""The main job end to end, as `coordgan demo` runs it: a synthetic-faces video with ground-truth part
masks, the first frame's parts propagated through it, mean J and F beside the identity baseline.

:func:`run_demo` takes an opened correspondence model (the CLI opens the exported encoder of a
checkpoint on ONNX Runtime, CPU). Outputs in `out`: faces.mp4, gt/, masks/ (+ summary.json),
identity/ (the first-frame mask copied to every frame), overlay.mp4, and demo.json last.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from runtime.errors import CoordGANError

SHIPPED_CKPT = Path(__file__).resolve().parents[1] / "checkpoints" / "tiny-synthetic-faces.safetensors"


@dataclass(frozen=True)
class DemoOptions:
    frames: int = 48  # frames of the synthetic video
    size: int = 128  # frame size in pixels
    seed: int = 7  # of the synthetic face and its motion
    memory: int = 3  # recent propagated frames kept as references

    def validate(self) -> None:
        if self.frames < 3 or self.size < 32:
            raise CoordGANError(f"The demo needs --frames 3 or more (J and F skip the first and last) and --size 32 "
                                f"or more, got {self.frames} and {self.size}.")


def write_inputs(out: Path, options: DemoOptions) -> tuple[Path, object]:
    """faces.mp4 and its ground truth gt/ (and identity/, the first mask repeated); (video, first mask)."""
    from coordgan.data.synthetic_faces import make_sequence
    from runtime.io.masks import DAVIS_PALETTE, write_mask
    from runtime.io.video import VideoWriter

    frames, masks = make_sequence(options.frames, options.size, options.seed)
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
    return video, masks[0]


def run_demo(model, out, options: DemoOptions = DemoOptions(), *, checkpoint: str = "",
             on_frame: Callable[[int, int | None], None] | None = None,
             on_note: Callable[[str], None] | None = None) -> dict:
    """Write the inputs, propagate, score; returns (and writes as demo.json) the result."""
    from runtime.davis.evaluate import evaluate_sequence
    from runtime.io.video import open_frames
    from runtime.propagation.sequence import PropagateOptions, Reference, propagate_sequence

    options.validate()
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo.json").unlink(missing_ok=True)  # written last: only a finished run's scores are there
    video, first_mask = write_inputs(out, options)
    propagate = PropagateOptions(memory=options.memory, overlay=out / "overlay.mp4", overwrite=True)
    summary = propagate_sequence(model, open_frames(video), [Reference(first_mask)], out / "masks", propagate,
                                 on_frame=on_frame, on_note=on_note)
    scores = {name: evaluate_sequence(out / folder, out / "gt")
              for name, folder in (("propagated", "masks"), ("identity baseline", "identity"))}
    result = {"checkpoint": checkpoint, "frames": options.frames, "size": options.size, "seed": options.seed,
              "memory": options.memory, "frames_per_s": summary["frames_per_s"],
              "wall_s": round(time.perf_counter() - started, 1),
              **{name: {"J_mean": s["J_mean"], "F_mean": s["F_mean"]} for name, s in scores.items()},
              "outputs": {"video": str(video), "ground_truth": str(out / "gt"), "masks": str(out / "masks"),
                          "overlay": str(propagate.overlay)}}
    from runtime.fileio import atomic_write

    with atomic_write(out / "demo.json", "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    return result
