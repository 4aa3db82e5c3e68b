"""`coordgan propagate` (video mask propagation) and `coordgan eval-video` (DAVIS J and F).

`register(app)` adds both commands to the main Typer app. Only typer is imported here: numpy,
the runtime and its backends load inside the commands, and nothing on the propagation path needs
PyTorch (except exporting a .safetensors/.pt checkpoint on the fly). `python -m
coordgan.propagate_cli ...` runs the two commands on their own with the CLI's error handling.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional

import typer

from runtime.errors import CoordGANError

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


def _opt(default, *flags: str, key: str | None = None):
    return typer.Option(default, *flags, help=_HELP[key or flags[0].lstrip("-").replace("-", "_")])


def register(app: typer.Typer) -> None:
    """Add `propagate` and `eval-video` to the main `coordgan` app."""

    @app.command("propagate")
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
        from runtime.propagation.sequence import PropagateOptions
        from runtime.propagation.jobs import plan

        options = PropagateOptions(batch=batch, memory=memory, tau=tau, topk=topk, save_probs=save_probs,
                                   overwrite=overwrite, resume=resume)
        options.validate()
        jobs = plan(input_path, out, refs=ref or (), seqs=seq or (), resolution=resolution, split=split,
                    ref_frames=ref_frames, shard=shard, overlay=overlay)
        console = _console()
        if not jobs:
            console.print(f"shard {shard} has no sequences; nothing to do")
            return
        with open_model(model, backend, url, device, batch, console) as corr_model:
            _run_jobs(corr_model, jobs, options, console)

    @app.command("eval-video")
    def eval_video(
        pred: Path = typer.Argument(..., help="Predicted masks: a folder of PNGs, or one folder per sequence."),
        gt: Path = typer.Argument(..., help="Ground truth: a DAVIS root, a folder of sequence folders, or one "
                                            "sequence folder of PNGs."),
        json_out: bool = typer.Option(False, "--json", help="Print JSON (with per-frame scores) instead of a table."),
        all_frames: bool = typer.Option(False, "--all-frames", help="Also score the first and last frames (DAVIS "
                                                                     "leaves them out)."),
        resolution: Optional[str] = typer.Option(None, "--resolution", help=_HELP["resolution"]),
    ):
        """DAVIS region similarity J and boundary F-measure per sequence and object, with means."""
        from runtime.davis.evaluate import evaluate

        result = evaluate(pred, gt, all_frames=all_frames, resolution=resolution)
        if json_out:
            print(json.dumps(_no_nan(result), indent=2))
            return
        _print_eval(result, _console(stderr=False))


def _console(stderr: bool = True):
    from rich.console import Console

    return Console(stderr=stderr)


def _cache_root() -> Path:
    root = os.environ.get("COORDGAN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "coordgan")
    return Path(root)


def _resolve_model(model: str | None, backend: str | None, url: str | None, console) -> str:
    """The artifact open_backend gets: a file path or a Triton address."""
    if url:
        if backend not in (None, "triton"):
            raise CoordGANError(f"--url is a Triton address; it goes with --backend triton, not {backend}.")
        return url
    if model is None:
        raise CoordGANError("Give the encoder with --model (encoder.onnx, an export directory, a .plan, or "
                            "triton://host:port/model), or --backend triton --url triton://host:port/model.")
    if "://" in model:
        return model
    path = Path(model)
    if not path.exists():
        raise CoordGANError(f"Model {path} does not exist.")
    if path.is_dir():
        names = ("encoder.plan", "encoder.engine") if backend == "tensorrt" else ("encoder.onnx", "encoder.plan")
        for name in names:
            if (path / name).is_file():
                return str(path / name)
        raise CoordGANError(f"{path} holds no {' or '.join(names)}; export one with `coordgan export onnx`.")
    if path.suffix.lower() in (".safetensors", ".pt", ".pth"):
        return str(export_checkpoint(path, console))
    return str(path)


def export_checkpoint(ckpt: Path, console, cache: Path | None = None) -> Path:
    """encoder.onnx of a checkpoint, exported (and verified) once into $COORDGAN_CACHE/onnx/<sha>/."""
    from runtime.fileio import sha256_file

    target = (cache or _cache_root()) / "onnx" / sha256_file(ckpt)[:16]
    onnx_path = target / "encoder.onnx"
    if onnx_path.is_file():
        return onnx_path
    try:
        from export.onnx_export import ExportOptions, export_onnx
    except ImportError as exc:
        raise CoordGANError(f"Exporting {ckpt} on the fly needs PyTorch and onnx ({exc.name} is missing); export it "
                            "with `coordgan export onnx` elsewhere and pass the encoder.onnx.") from None
    console.print(f"exporting the encoder of {ckpt} to {target} (once)")
    try:
        export_onnx(ckpt, target, ExportOptions(only="encoder"))
    except CoordGANError:
        if not onnx_path.is_file():  # another process (another shard) may have won the race
            raise
    return onnx_path


def open_model(model, backend, url, device, batch, console):
    from runtime.propagation.model import CorrespondenceModel

    if device not in ("auto", "cpu", "cuda"):
        raise CoordGANError(f"--device must be auto, cpu or cuda, not {device!r}.")
    artifact = _resolve_model(model, backend, url, console)
    from runtime.backends import backend_for

    kind = backend or backend_for(artifact)
    options = {"device": device} if kind == "onnxruntime" else {}
    return CorrespondenceModel(artifact, backend=backend, batch=batch, lookup_device=device, **options)


def frames_progress(console):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    from rich.text import Text

    class FramesPerSecond(ProgressColumn):
        def render(self, task):
            return Text(f"{task.speed:.1f} frames/s" if task.speed else "")

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), FramesPerSecond(),
                    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console)


def _run_jobs(model, jobs, options, console) -> None:
    import dataclasses

    from runtime.propagation.sequence import propagate_sequence

    opened = [job.open() for job in jobs]  # every input and reference mask checked before any output
    for job, (source, refs) in zip(jobs, opened):
        job_options = dataclasses.replace(options, overlay=job.overlay)
        progress, tasks = frames_progress(console), []

        def on_frame(done, total, name=job.name):
            if not tasks:  # shown from the first frame on: a refused run leaves no empty bar behind
                progress.start()
                tasks.append(progress.add_task(name, total=total))
            progress.update(tasks[0], completed=done, total=total)

        try:
            summary = propagate_sequence(model, source, refs, job.out_dir, job_options, name=job.name,
                                         on_frame=on_frame)
        finally:
            if tasks:
                progress.stop()
        if summary.get("skipped"):
            console.print(f"{job.name}: already complete, skipped")
            continue
        resumed = f", resumed at frame {summary['resumed_from']}" if summary.get("resumed_from") else ""
        console.print(f"{job.name}: {summary['frames']} frames, {summary['frames_per_s']} frames/s{resumed} -> "
                      f"{job.out_dir}")


def _no_nan(value):
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nan(v) for v in value]
    return value


def _fmt(v) -> str:
    return "-" if v != v else f"{v:.3f}"


def _print_eval(result: dict, console) -> None:
    from rich.table import Table

    table = Table(title="DAVIS J (region) and F (boundary)", caption=result["convention"])
    for col in ("sequence", "object", "J mean", "J recall", "J decay", "F mean", "F recall", "F decay"):
        table.add_column(col, justify="left" if col in ("sequence", "object") else "right")
    for seq, r in result["sequences"].items():
        for obj, o in r["objects"].items():
            table.add_row(seq, obj, *(_fmt(o[m][s]) for m in ("J", "F") for s in ("mean", "recall", "decay")))
    g = result["global"]
    table.add_section()
    table.add_row("all", "mean", *(_fmt(g[f"{m}-{s}"]) for m in ("J", "F") for s in ("Mean", "Recall", "Decay")))
    console.print(table)
    console.print(f"J&F-Mean {_fmt(g['J&F-Mean'])}  J-Mean {_fmt(g['J-Mean'])}  F-Mean {_fmt(g['F-Mean'])}")


def main():
    """Run these two commands on their own with the `coordgan` CLI's error handling."""
    from coordgan.cli import run_app

    app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
    register(app)
    run_app(app)


if __name__ == "__main__":
    main()
