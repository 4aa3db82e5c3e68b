"""`coordgan triton build`: the Triton model repository sub-app (register(app) adds it to `coordgan`).

User errors are CoordGANError (one sentence); `coordgan.cli.run_app` prints them and exits 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from runtime.errors import CoordGANError

app = typer.Typer(help="Triton Inference Server model repositories.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)


@app.callback()
def _group():
    """Triton Inference Server model repositories."""  # a callback keeps `build` a sub-command


def _sizes(text: Optional[str]) -> Optional[tuple[int, ...]]:
    if text is None:
        return None
    try:
        sizes = tuple(int(b) for b in text.split(","))
    except ValueError:
        raise CoordGANError(f"--preferred-batch must be integers separated by commas, not {text!r}.") from None
    return sizes


@app.command("build")
def build(
    models: Path = typer.Option(..., "--models", help="Export directory (manifest.json, encoder.onnx, generator.onnx; "
                                "optional corr_lookup.onnx and *.plan)."),
    backend: str = typer.Option(..., "--backend", help="onnxruntime, tensorrt or python (ONNX Runtime inside "
                                "Triton's python backend: what the local `coordgan serve` runs)."),
    out: Path = typer.Option(..., "--out", "-o", help="Repository folder to create."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing repository."),
    max_batch: int = typer.Option(8, "--max-batch", help="max_batch_size of every model."),
    dynamic_batching: bool = typer.Option(True, "--dynamic-batching/--no-dynamic-batching",
                                          help="Let Triton batch concurrent requests."),
    preferred_batch: Optional[str] = typer.Option(None, "--preferred-batch", help="Preferred batch sizes, comma "
                                                  "separated [default: 4,8 up to --max-batch]."),
    queue_delay_us: int = typer.Option(2000, "--queue-delay-us", help="Longest wait for a fuller batch (us)."),
    instances: int = typer.Option(1, "--instances", help="Instances of each model."),
    kind: Optional[str] = typer.Option(None, "--kind", help="Instance kind: cpu, gpu or auto [default: cpu for "
                                       "python, gpu for tensorrt, auto for onnxruntime]."),
    video: bool = typer.Option(True, "--video/--no-video", help="Include the stateful coordgan_video model."),
    video_idle_s: float = typer.Option(60.0, "--video-idle-s", help="Release a video sequence idle this long (s)."),
    memory: int = typer.Option(3, "--memory", help="Video: recent frames kept as references besides the first."),
    tau: float = typer.Option(0.01, "--tau", help="Lookup softmax temperature (video; the lookup unless "
                              "corr_lookup.onnx fixes it)."),
    topk: Optional[int] = typer.Option(None, "--topk", help="Keep the k nearest reference pixels (default: all)."),
):
    """Write a Triton model repository: encoder, generator, corr_lookup, frame_labels ensemble, video."""
    from rich.console import Console

    from triton_models.repository import BuildOptions, build_repository

    options = BuildOptions(backend=backend, max_batch=max_batch, dynamic_batching=dynamic_batching,
                           preferred_batch=_sizes(preferred_batch), queue_delay_us=queue_delay_us,
                           instances=instances, kind=kind, video=video, video_idle_s=video_idle_s, memory=memory,
                           tau=tau, topk=topk, overwrite=overwrite)
    result = build_repository(models, out, options)
    console = Console(soft_wrap=True)  # paths stay whole, to copy
    for note in result.notes:
        console.print(f"[yellow]note[/yellow]: {note}")
    console.print(f"wrote {result.repo}:")
    for plan in result.models:
        files = ", ".join(["config.pbtxt", *(f"{p}" for p in [*plan.texts, *plan.copies])])
        console.print(f"  {plan.name:<24} {plan.variant:<12} {files}")


def register(parent: typer.Typer) -> None:
    parent.add_typer(app, name="triton")

