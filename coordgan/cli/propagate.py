"""`coordgan propagate`: label masks for every frame of videos, frame folders or DAVIS datasets.

Nothing on this path needs PyTorch, except exporting a .safetensors/.pt checkpoint on the fly
(once, into the export cache).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from coordgan.cli.common import frames_bar
from runtime.terminal import console, tagged

_HELP = {
    "input": "A video (mp4/avi/mov/mkv...), a folder of frames (.jpg/.png, in name order) or a DAVIS root "
             "(JPEGImages/<res>/<seq>/, Annotations/<res>/<seq>/).",
    "model": "The encoder: encoder.onnx, an export directory, a TensorRT .plan, triton://host:port/model, or a "
             ".safetensors/.pt checkpoint (exported to ONNX once into the cache; needs PyTorch).",
    "ref": "Reference mask (palette or grayscale PNG, any resolution) for the first frame; FRAME=MASK.png for "
           "another annotated frame (FRAME: its name or index). Repeatable.",
    "out": "Output folder: one palette PNG per frame (OUT/<seq>/ for a DAVIS root), summary.json last.",
    "batch": "Frames per encoder call.",
    "memory": "Recent propagated frames kept as references, besides the annotated ones.",
    "tau": "Softmax temperature of the lookup over coordinate distances.",
    "topk": "Use only the k nearest reference pixels per pixel (default: all, weighted by the softmax).",
    "overlay": "Also write a video of the frames with the masks blended in (for a dataset: NAME_<seq>.mp4).",
    "save_probs": "Also write probs/<frame>.npz: label probabilities at the model's grid (float16).",
    "overwrite": "Replace existing outputs.",
    "overlap": "Decode the next frames and write the masks on threads beside inference (the same bytes either "
               "way; --no-overlap runs each stage in turn).",
    "resume": "Continue interrupted sequences where they stopped (complete ones are skipped).",
    "shard": "I/N: process every N-th sequence (sorted by name) starting at I (0-based).",
    "seq": "DAVIS sequence to process (repeatable; default: all).",
    "split": "DAVIS ImageSets list to process (e.g. val).",
    "resolution": "DAVIS resolution folder (default: 480p, or the only one).",
    "ref_frames": "DAVIS annotations used as references: first, all, or auto (first when every frame is "
                  "annotated, i.e. ground truth; else all).",
    "backend": "onnxruntime, tensorrt or triton (default: from --model).",
    "url": "Triton address triton://host:port/model (with --backend triton).",
    "device": "auto, cpu or cuda, for ONNX Runtime and the lookup.",
}


def _opt(default, *flags: str):
    return typer.Option(default, *flags, help=_HELP[flags[0].lstrip("-").replace("-", "_")])


def propagate(
    input_path: Path = typer.Argument(..., metavar="INPUT", help=_HELP["input"]),
    out: Path = _opt(..., "--out", "-o"),
    model: Optional[str] = _opt(None, "--model", "-m"),
    ref: Optional[List[str]] = _opt(None, "--ref"),
    batch: int = _opt(8, "--batch"),
    memory: int = _opt(3, "--memory"),
    tau: float = _opt(0.01, "--tau"),
    topk: Optional[int] = _opt(None, "--topk"),
    overlay: Optional[Path] = _opt(None, "--overlay"),
    save_probs: bool = _opt(False, "--save-probs"),
    overwrite: bool = _opt(False, "--overwrite"),
    resume: bool = _opt(False, "--resume"),
    overlap: bool = typer.Option(True, "--overlap/--no-overlap", help=_HELP["overlap"]),
    shard: Optional[str] = _opt(None, "--shard"),
    seq: Optional[List[str]] = _opt(None, "--seq"),
    split: Optional[str] = _opt(None, "--split"),
    resolution: Optional[str] = _opt(None, "--resolution"),
    ref_frames: str = _opt("auto", "--ref-frames"),
    backend: Optional[str] = _opt(None, "--backend"),
    url: Optional[str] = _opt(None, "--url"),
    device: str = _opt("auto", "--device"),
):
    """Propagate label masks from annotated frames to every frame through CoordGAN correspondence maps."""
    from runtime.devices import check_device
    from runtime.propagation.jobs import plan, run_jobs
    from runtime.propagation.model import open_model
    from runtime.propagation.sequence import PropagateOptions

    options = PropagateOptions(batch=batch, memory=memory, tau=tau, topk=topk, save_probs=save_probs,
                               overwrite=overwrite, resume=resume, overlap=overlap)
    options.validate()
    jobs = plan(input_path, out, refs=ref or (), seqs=seq or (), resolution=resolution, split=split,
                ref_frames=ref_frames, shard=shard, overlay=overlay)
    err = console(stderr=True)
    if not jobs:
        err.print(f"shard {shard} has no sequences; nothing to do")
        return
    check_device(device)  # before an on-the-fly export
    artifact = encoder_artifact(model, backend, url, err.print)
    with open_model(artifact, backend=backend, device=device, batch=batch) as corr_model:
        for job, summary in run_jobs(corr_model, jobs, options, frames_bar=lambda name: frames_bar(err, name),
                                     on_note=lambda name, text: err.print(tagged("warning", f" {name}: {text}"),
                                                                          soft_wrap=True)):
            if summary.get("skipped"):
                err.print(f"{job.name}: already complete, skipped")
                continue
            resumed = f", resumed at frame {summary['resumed_from']}" if summary.get("resumed_from") else ""
            err.print(f"{job.name}: {summary['frames']} frames, {summary['frames_per_s']} frames/s{resumed} -> "
                      f"{job.out_dir}")


def encoder_artifact(model: str | None, backend: str | None, url: str | None, say) -> str:
    """runtime.propagation.model.resolve_encoder, with a checkpoint exported once into the export cache."""
    from runtime.propagation.model import CHECKPOINT_SUFFIXES, resolve_encoder

    artifact = resolve_encoder(model, backend, url)
    if "://" not in artifact and Path(artifact).suffix.lower() in CHECKPOINT_SUFFIXES:
        from export.cache import encoder_onnx

        return str(encoder_onnx(artifact, progress=say))
    return artifact


def register(app: typer.Typer) -> None:
    app.command("propagate")(propagate)
