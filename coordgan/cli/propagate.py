"""`coordgan propagate`: label masks for every frame of videos, frame folders or DAVIS datasets.

Nothing on this path needs PyTorch, except exporting a .safetensors/.pt checkpoint on the fly
(once, into the export cache).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from coordgan.cli.common import frames_bar
from runtime.errors import CoordGANError
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
    "backend": "auto (an ONNX encoder on the faster of onnxruntime and openvino on the CPU, by a short trial that "
               "is remembered; ONNX Runtime's CUDA provider on a GPU; otherwise from --model), onnxruntime, openvino, "
               "tensorrt or triton.",
    "url": "Triton address triton://host:port/model (with --backend triton).",
    "device": "auto, cpu or cuda, for ONNX Runtime and the lookup.",
    "cluster": "Fan the sequences out over Ray workers: local (an embedded instance on this machine, on "
               "127.0.0.1), auto (RAY_ADDRESS or this machine's running cluster) or HOST:PORT of a running "
               "cluster. INPUT, OUT and --model must be paths every node sees. Needs Ray (the cluster extra).",
    "workers": "Ray workers, each holding the model (default: as many as the cluster's CPUs/GPUs fit, at most "
               "one per sequence). With --cluster.",
    "cpus_per_worker": "CPUs (and threads) each worker reserves. With --cluster.",
    "gpus_per_worker": "GPUs each worker reserves (e.g. 1, or 0.5 for two workers per GPU). With --cluster.",
    "max_retries": "Run a sequence again (resumed) up to this many times when its worker dies. With --cluster.",
    "report": "At the end, write OUT/report.html: every sequence's frames with their masks, numbers and warnings "
              "(what `coordgan report OUT` writes).",
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
    backend: str = _opt("auto", "--backend"),
    url: Optional[str] = _opt(None, "--url"),
    device: str = _opt("auto", "--device"),
    cluster: Optional[str] = _opt(None, "--cluster"),
    workers: Optional[int] = _opt(None, "--workers"),
    cpus_per_worker: float = _opt(1.0, "--cpus-per-worker"),
    gpus_per_worker: float = _opt(0.0, "--gpus-per-worker"),
    max_retries: int = _opt(2, "--max-retries"),
    report: bool = _opt(False, "--report"),
):
    """Propagate label masks from annotated frames to every frame through CoordGAN correspondence maps."""
    from runtime.devices import check_device
    from runtime.lookup import impl_for_device, warm_up
    from runtime.propagation.jobs import plan, run_jobs
    from runtime.propagation.model import open_model
    from runtime.propagation.sequence import PropagateOptions

    options = PropagateOptions(batch=batch, memory=memory, tau=tau, topk=topk, save_probs=save_probs,
                               overwrite=overwrite, resume=resume, overlap=overlap, lookup=impl_for_device(device))
    options.validate()
    if cluster is None and (workers is not None or cpus_per_worker != 1.0 or gpus_per_worker or max_retries != 2):
        raise CoordGANError("--workers, --cpus-per-worker, --gpus-per-worker and --max-retries apply with --cluster.")
    jobs = plan(input_path, out, refs=ref or (), seqs=seq or (), resolution=resolution, split=split,
                ref_frames=ref_frames, shard=shard, overlay=overlay)
    err = console(stderr=True)
    if not jobs:
        err.print(f"shard {shard} has no sequences; nothing to do")
        return
    check_device(device)  # before an on-the-fly export
    artifact = encoder_artifact(model, backend, url, err.print)
    if cluster is not None:  # Ray is imported only on this path
        from runtime.propagation.cluster import ClusterOptions, ModelSpec

        failure = propagate_on_cluster(jobs, options, ModelSpec(artifact, backend, device, batch),
                                       ClusterOptions(cluster, workers, cpus_per_worker, gpus_per_worker, max_retries),
                                       out, err)
        try:  # the page shows failed sequences too; the command then ends with the failure's sentence
            _report(report, out, artifact)
        except CoordGANError as exc:
            if failure is None:
                raise
            err.print(tagged("warning", f" no report: {exc}"), soft_wrap=True)
        if failure is not None:
            raise failure
        return
    warm_up(options.lookup, options.params.mode)  # the lookup's kernels load beside the encoder's opening
    with open_model(artifact, backend=backend, device=device, batch=batch) as corr_model:
        chose = corr_model.backend.note  # how auto chose: said with the first result (an error stays one sentence)
        for job, summary in run_jobs(corr_model, jobs, options, frames_bar=lambda name: frames_bar(err, name),
                                     on_note=lambda name, text: err.print(tagged("warning", f" {name}: {text}"),
                                                                          soft_wrap=True)):
            if chose:
                err.print(f"encoder: {corr_model.backend.name} on {corr_model.backend.device} ({chose})")
                chose = ""
            if summary.get("skipped"):
                err.print(f"{job.name}: already complete, skipped")
                continue
            resumed = f", resumed at frame {summary['resumed_from']}" if summary.get("resumed_from") else ""
            err.print(f"{job.name}: {summary['frames']} frames, {summary['frames_per_s']} frames/s{resumed} -> "
                      f"{job.out_dir}")
    _report(report, out, artifact)


def _report(wanted: bool, out: Path, artifact: str) -> None:
    """--report: the run's page, its header naming the export the encoder came from (when it is one)."""
    if wanted:
        from coordgan.cli.report import write_and_say
        from runtime.report import export_of

        write_and_say(out, model=export_of(artifact))


def propagate_on_cluster(jobs, options, spec, cluster, out: Path, err) -> CoordGANError | None:
    """runtime.propagation.cluster.run_cluster with a progress display, then the table of sequences;
    returns the error to end the command with when sequences failed (raised by the caller, after the report)."""
    from rich.table import Table

    from runtime.propagation.cluster import SUMMARY_FILE, run_cluster

    with _ClusterDisplay(err) as display:
        result = run_cluster(jobs, options, spec, cluster, out, observer=display)
    table = Table(title="cluster run")
    for column in ("sequence", "status", "attempts", "worker", "frames", "seconds", "reason"):
        table.add_column(column, overflow="fold")  # a reason or a path is read whole, never cut with an ellipsis
    for r in result.sequences:
        where = f"{r.worker} on {r.node}" if r.node else ("" if r.worker is None else str(r.worker))
        resumed = f" (from {r.resumed_from})" if r.resumed_from else ""
        table.add_row(r.sequence, r.status, str(r.attempts), where, f"{r.frames or 0}{resumed}",
                      "" if r.seconds is None else f"{r.seconds:.1f}", r.reason or "")
    err.print(table)
    if result.backend_note:
        err.print(f"encoder: {result.backend} ({result.backend_note})", soft_wrap=True)
    err.print(f"{result.frames_processed} frames in {result.seconds:.1f} s ({result.frames_per_s} frames/s) on "
              f"{result.workers} workers of {result.threads_per_worker} threads; start-up {result.startup_s:.1f} s -> "
              f"{out / SUMMARY_FILE}")
    if result.failed:
        return CoordGANError(f"{len(result.failed)} of {len(result.sequences)} sequences failed (the table above, "
                             f"{out / SUMMARY_FILE}); fix them and run again with --resume.")
    return None


class _ClusterDisplay:
    """One Rich display in the driver: frames done of the total across workers, sequences done,
    workers alive, retries; a line per finished sequence above it (a runtime.propagation.cluster
    ClusterObserver by its two methods, so the CLI module loads without the runtime)."""

    def __init__(self, err):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.err = err
        self.bar = Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[status]}", markup=False), TimeElapsedColumn(), console=err)
        self.task = None  # shown once Ray is up: a refused address leaves one sentence, no empty bar

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.task is not None:
            self.bar.stop()

    def progress(self, p) -> None:
        if self.task is None:
            self.bar.start()
            self.task = self.bar.add_task("starting workers", total=None, status="")
        status = (f"sequences {p.sequences_done}/{p.sequences}  workers {p.workers_alive}/{p.workers}  "
                  f"retries {p.retries}")
        self.bar.update(self.task, description="frames" if p.started else "starting workers",
                        completed=p.frames_done, total=p.frames_total if p.started else None, status=status)

    def finished(self, r) -> None:
        if r.status == "failed":
            self.err.print(tagged("failed", f" {r.sequence}: {r.reason}", "red"), soft_wrap=True)
            return
        for text in r.warnings:
            self.err.print(tagged("warning", f" {r.sequence}: {text}"), soft_wrap=True)
        if r.status == "skipped":
            self.err.print(f"{r.sequence}: already complete, skipped")
            return
        resumed = f", resumed at frame {r.resumed_from}" if r.resumed_from else ""
        self.err.print(f"{r.sequence}: {r.frames} frames in {r.seconds:.1f} s on worker {r.worker}, attempt "
                       f"{r.attempts}{resumed}")


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
