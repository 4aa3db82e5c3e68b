"""`coordgan triton build` (a model repository from an export directory) and `coordgan serve` (a real
tritonserver in the foreground until Ctrl-C or SIGTERM). The work is in triton_models/."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from coordgan.cli.common import positive_ints
from runtime.errors import CoordGANError
from runtime.terminal import console, tagged

app = typer.Typer(help="Triton Inference Server model repositories.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)


@app.callback()
def _group():
    """Triton Inference Server model repositories."""  # a callback keeps `build` a sub-command


@app.command("build")
def build(
    models: Path = typer.Option(..., "--models", help="Export directory (manifest.json, encoder.onnx, generator.onnx; "
                                "optional corr_lookup.onnx and *.plan)."),
    backend: str = typer.Option(..., "--backend", help="onnxruntime, openvino (CPU), tensorrt or python (ONNX "
                                "Runtime inside Triton's python backend: what the local `coordgan serve` runs)."),
    out: Path = typer.Option(..., "--out", "-o", help="Repository folder to create."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing repository."),
    max_batch: int = typer.Option(8, "--max-batch", help="max_batch_size of every model."),
    dynamic_batching: bool = typer.Option(True, "--dynamic-batching/--no-dynamic-batching",
                                          help="Let Triton batch concurrent requests."),
    preferred_batch: Optional[str] = typer.Option(None, "--preferred-batch", help="Preferred batch sizes, comma "
                                                  "separated (default: 4,8 up to --max-batch)."),
    queue_delay_us: int = typer.Option(2000, "--queue-delay-us", help="Longest wait for a fuller batch (us)."),
    instances: int = typer.Option(1, "--instances", help="Instances of each model."),
    kind: Optional[str] = typer.Option(None, "--kind", help="Instance kind: cpu, gpu or auto (default: cpu for "
                                       "python, gpu for tensorrt, auto for onnxruntime)."),
    video: bool = typer.Option(True, "--video/--no-video", help="Include the stateful coordgan_video model."),
    video_idle_s: float = typer.Option(60.0, "--video-idle-s", help="Release a video sequence idle this long (s)."),
    memory: int = typer.Option(3, "--memory", help="Video: recent frames kept as references besides the first."),
    tau: float = typer.Option(0.01, "--tau", help="Lookup softmax temperature (video; the lookup unless "
                              "corr_lookup.onnx fixes it)."),
    topk: Optional[int] = typer.Option(None, "--topk", help="Keep the k nearest reference pixels (default: all)."),
):
    """Write a Triton model repository: encoder, generator, corr_lookup, frame_labels ensemble, video."""
    from triton_models.repository import BuildOptions, build_repository

    preferred = positive_ints(preferred_batch, "--preferred-batch") if preferred_batch else None
    options = BuildOptions(backend=backend, max_batch=max_batch, dynamic_batching=dynamic_batching,
                           preferred_batch=preferred, queue_delay_us=queue_delay_us, instances=instances, kind=kind,
                           video=video, video_idle_s=video_idle_s, memory=memory, tau=tau, topk=topk,
                           overwrite=overwrite)
    result = build_repository(models, out, options)
    out = console(soft_wrap=True)  # paths stay whole, to copy
    for note in result.notes:
        out.print(tagged("note", f": {note}"))
    out.print(f"wrote {result.repo}:")
    for plan in result.models:
        files = ", ".join(["config.pbtxt", *(f"{p}" for p in [*plan.texts, *plan.copies])])
        out.print(f"  {plan.name:<24} {plan.variant:<12} {files}")


def _model_states(server) -> list[tuple[str, str]]:
    try:
        return server.model_states()
    except (OSError, ValueError):  # it died right after answering ready
        raise CoordGANError(f"tritonserver stopped answering right after it was ready: {server.first_error()} "
                            f"(log: {server.log_path}).") from None


def serve(
    repo: Path = typer.Option(..., "--repo", help="Triton model repository (from `coordgan triton build`)."),
    tritonserver: Optional[Path] = typer.Option(None, "--tritonserver", help="tritonserver binary (default: the "
                                                "one in the nvidia-pytriton wheel, python backend, CPU)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (0.0.0.0 exposes it to the network)."),
    http_port: int = typer.Option(8000, "--http-port", help="HTTP/REST port, 1-65535, not in use (0: any free one)."),
    grpc_port: int = typer.Option(8001, "--grpc-port", help="gRPC port, 1-65535, not in use (0: any free one)."),
    metrics_port: Optional[int] = typer.Option(None, "--metrics-port", help="Prometheus metrics port (default: "
                                               "metrics off; 0: any free one)."),
    log: Optional[Path] = typer.Option(None, "--log", help="Append the server's log here (default: a temp file, "
                                       "kept only when an error names it)."),
    startup_timeout: float = typer.Option(120.0, "--startup-timeout", help="Seconds to wait for readiness."),
):
    """Serve a model repository with a real tritonserver until Ctrl-C / SIGTERM / SIGHUP."""
    from triton_models.server import TritonServer

    if not startup_timeout > 0:
        raise CoordGANError(f"--startup-timeout must be greater than 0 seconds, got {startup_timeout:g}.")
    # checks the repository and the ports (range, distinct, free) before anything starts
    server = TritonServer(repo, binary=tritonserver, host=host, http_port=http_port, grpc_port=grpc_port,
                          metrics_port=metrics_port, log_path=log)
    stopped = False
    try:
        server.start(timeout_s=startup_timeout)
        print(f"tritonserver ready (log: {server.log_path})")
        print(f"  HTTP  http://{server.http_url}")
        print(f"  gRPC  {server.grpc_url}")
        if server.metrics_url:
            print(f"  metrics  http://{server.metrics_url}/metrics")
        for name, state in _model_states(server):
            print(f"  model {name}: {state}")
        print("Ctrl-C or SIGTERM stops it.", flush=True)
        while server.alive():
            time.sleep(0.5)
        raise CoordGANError(f"tritonserver stopped on its own (code {server.process.returncode}): "
                            f"{server.first_error()} (log: {server.log_path}).")
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM / SIGHUP through cli.errors, which ends with 130, 143 or 129
        stopped = True
        print(f"tritonserver stopped (exit code {server.stop()}).", flush=True)
        raise
    finally:
        server.stop()
        server.cleanup(keep_log=not stopped)  # the temp log stays where an error sentence names it


def register(parent: typer.Typer) -> None:
    parent.add_typer(app, name="triton")
    parent.command("serve")(serve)
