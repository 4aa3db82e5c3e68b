"""`coordgan bench`: latency / throughput / memory of every model and backend, in one table.

`register(app)` adds the command to the main Typer app. Only typer is imported here: torch, the
runners and the exporter load inside the command, so `coordgan --help` starts without PyTorch.

    coordgan bench encoder --preset celeba-128 --batch 1,8
    coordgan bench pipeline --ckpt ckpt.pt --backends published,torch,ort-cpu --json run.json
    coordgan bench --compare before.json after.json
    coordgan bench triton --url 127.0.0.1:8001 --model coordgan_encoder --concurrency 1,2,4,8,16 --json t.json
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from runtime.errors import CoordGANError

BACKENDS_HELP = ("Comma-separated: published (pipeline only: the authors' evaluation path), torch, torch-compile, "
                 "ort-cpu, ort-cuda, trt, triton. Default: all; unavailable ones are listed as skipped with "
                 "the reason.")


def _ints(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(b) for b in text.split(","))
        if not values or min(values) < 1:
            raise ValueError
    except ValueError:
        raise CoordGANError(f"{option} must be positive integers separated by commas, not {text!r}.") from None
    return values


def _frame_size(text: Optional[str]):
    if text is None:
        return None
    try:
        parts = [int(p) for p in text.lower().split("x")]
        if len(parts) == 1:
            parts *= 2
        h, w = parts
        if h < 1 or w < 1:
            raise ValueError
    except ValueError:
        raise CoordGANError(f"--frame-size must be HxW or one number, not {text!r}.") from None
    return (h, w)


def _shapes(values: Optional[List[str]]) -> dict:
    """--shape NAME:D1,D2 (repeatable) -> {NAME: (D1, D2)}: dims without the batch dimension."""
    shapes = {}
    for text in values or ():
        name, sep, dims = text.partition(":")
        if not sep or not name:
            raise CoordGANError(f"--shape must be NAME:D1,D2,... (dims without the batch), not {text!r}.")
        shapes[name] = _ints(dims, f"--shape {name}")
    return shapes


def bench(
    target: Optional[str] = typer.Argument(None, help="encoder, generator, lookup, pipeline, or triton (a load "
                                           "test of a served model; omit with --compare)."),
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="Checkpoint: ours (.safetensors) or the authors' .pt."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Random weights of this preset (timing does not "
                                         "depend on the values)."),
    backends: Optional[str] = typer.Option(None, "--backends", help=BACKENDS_HELP),
    batch: str = typer.Option("1", "--batch", help="Batch sizes to sweep, comma-separated (e.g. 1,2,4,8); "
                              "triton: the batch of each request."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 or fp16 (fp16: torch on CUDA, ONNX exported "
                                  "with --fp16; TensorRT plans run as built)."),
    warmup: int = typer.Option(3, "--warmup", help="Untimed calls per batch size (triton: per client and level)."),
    iters: int = typer.Option(20, "--iters", help="Timed calls per batch size."),
    max_time: Optional[float] = typer.Option(None, "--max-time", help="Stop a batch size's timed loop after this "
                                             "many seconds (at least one call is always timed)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch and ONNX Runtime "
                                          "(default: their own default)."),
    onnx_dir: Optional[Path] = typer.Option(None, "--onnx-dir", help="Existing ONNX export directory for ort-* "
                                            "(default: export on the fly into the cache)."),
    trt_dir: Optional[Path] = typer.Option(None, "--trt-dir", help="Directory with encoder.plan / generator.plan."),
    url: Optional[str] = typer.Option(None, "--url", help="Triton server, triton://host:port (model named after "
                                      "the target) or triton://host:port/model; triton target: also HOST:PORT "
                                      "or triton+http://host:port."),
    model: Optional[str] = typer.Option(None, "--model", help="triton: the served model to load-test "
                                        "(e.g. coordgan_encoder)."),
    concurrency: str = typer.Option("1,2,4,8,16", "--concurrency", help="triton: closed-loop clients per level, "
                                    "comma-separated."),
    protocol: Optional[str] = typer.Option(None, "--protocol", help="triton: grpc or http (default: the --url "
                                           "scheme's, else grpc)."),
    requests: Optional[int] = typer.Option(None, "--requests", help="triton: timed requests per level, shared by "
                                           "its clients (default 100, or unbounded with --duration)."),
    duration: Optional[float] = typer.Option(None, "--duration", help="triton: seconds per level (with --requests:"
                                             " whichever ends first)."),
    shape: Optional[List[str]] = typer.Option(None, "--shape", help="triton: NAME:D1,D2 for inputs with -1 dims "
                                              "(dims without the batch; repeatable)."),
    lookup_method: str = typer.Option("auto", "--lookup-method", help="CPU lookup: dense, sparse or auto."),
    refs: int = typer.Option(1, "--refs", help="Reference frames in the lookup's memory (R)."),
    classes: int = typer.Option(8, "--classes", help="Label classes (C)."),
    tau: float = typer.Option(0.01, "--tau", help="Softmax temperature of the lookup."),
    frame_size: Optional[str] = typer.Option(None, "--frame-size", help="Pipeline frame size HxW (default: the "
                                             "model's canonical size)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random weights (--preset) and inputs."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="ONNX export cache "
                                             "(default: ~/.cache/coordgan/bench)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results as JSON."),
    csv_out: Optional[Path] = typer.Option(None, "--csv", help="Write the results as CSV."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="PNG: latency and throughput vs batch per backend."),
    compare: Optional[List[Path]] = typer.Option(None, "--compare", help="Compare two --json results: "
                                                 "--compare a.json --compare b.json (or: --compare a.json b.json)."),
):
    """Latency (p50/p90/p99/mean), throughput and peak memory of a target on every backend; `triton`: a
    perf_analyzer-style load test of a served model (latency, throughput, Triton's queue / compute times)."""
    import json
    import sys

    from rich.console import Console

    from runtime.bench import report

    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # logs and pipes: keep the table on one line per row
    if compare:
        files = list(compare) + ([Path(target)] if target and len(compare) == 1 else [])
        if len(files) != 2:
            raise CoordGANError("--compare takes two result files: --compare a.json b.json.")
        a, b = (_concurrency_in_backend(report.load_results(f)) for f in files)
        rows = report.compare(a, b)
        if not rows:
            raise CoordGANError(f"{files[0]} and {files[1]} have no timed rows in common "
                                "(same target, backend and batch).")
        report.render_compare(rows, files[0].name, files[1].name, console)
        if json_out:
            report.write_text(json_out, json.dumps({"a": str(files[0]), "b": str(files[1]), "rows": rows},
                                                  indent=2) + "\n")
        return
    if target is None:
        raise CoordGANError("Give a target: encoder, generator, lookup, pipeline or triton "
                            "(or --compare a.json b.json).")
    if target == "triton":
        if csv_out or plot:
            raise CoordGANError("--csv and --plot are not available for the triton load test; use --json.")
        if ckpt or preset or backends:
            raise CoordGANError("--ckpt, --preset and --backends do not apply to the triton load test: it times "
                                "the model the server at --url serves.")
        if url is None:
            raise CoordGANError("The triton load test needs --url HOST:PORT (or triton://host:port).")
        from runtime.bench.triton_load import LoadOptions

        options = LoadOptions(concurrency=_ints(concurrency, "--concurrency"), batches=_ints(batch, "--batch"),
                              requests=requests if requests is not None or duration is not None else 100,
                              duration_s=duration, warmup=warmup, shapes=_shapes(shape), seed=seed)
        _bench_triton(url, model, protocol, options, json_out, console)
        return
    from runtime.bench.workload import TARGETS

    if target not in TARGETS:
        raise CoordGANError(f"Unknown target {target!r}; choose one of: {', '.join(TARGETS)}.")

    from coordgan.bench import BenchOptions, run_bench
    from coordgan.bench.source import ModelSource

    options = BenchOptions(
        target=target, backends=tuple(b.strip() for b in backends.split(",") if b.strip()) if backends else (),
        batches=_ints(batch, "--batch"), precision=precision, warmup=warmup, iters=iters, max_time_s=max_time,
        threads=threads, onnx_dir=onnx_dir, trt_dir=trt_dir, url=url, lookup_method=lookup_method, refs=refs,
        classes=classes, tau=tau, frame_size=_frame_size(frame_size), seed=seed)
    options.validate()
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                  transient=True) as bar:
        task = bar.add_task("starting", total=None)

        def say(message):
            bar.update(task, description=message)

        source = ModelSource(ckpt=ckpt, preset=preset, seed=seed, cache_dir=cache_dir, progress=say)
        meta, rows = run_bench(options, source, progress=say)
    meta["command"] = " ".join(sys.argv)
    report.render_table(rows, title=f"coordgan bench {target}: {meta['workload']} ({meta['source']})",
                        console=console)
    _print_published_ratio(rows, console)
    if json_out:
        report.write_text(json_out, report.to_json(meta, rows))
        console.print(f"wrote {json_out}")
    if csv_out:
        report.write_text(csv_out, report.to_csv(rows))
        console.print(f"wrote {csv_out}")
    if plot:
        report.render_plot(rows, plot, title=f"coordgan bench {target} ({meta['source']})")
        console.print(f"wrote {plot}")


def _concurrency_in_backend(data: dict) -> dict:
    """Triton load-test rows differ by concurrency too: fold it into the backend, which compare() matches on."""
    for r in data["rows"]:
        if r.get("concurrency") is not None:
            r["backend"] = f"{r['backend']} x{r['concurrency']}"
    return data


def _bench_triton(url, model, protocol, options, json_out, console) -> None:
    """`coordgan bench triton`: perf_analyzer-style load levels against a running server."""
    import sys

    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from runtime.bench import report
    from runtime.bench.triton_load import TritonTarget, render_table, run_load

    options.validate()
    target = TritonTarget(url, model, protocol)
    try:
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                      transient=True) as bar:
            task = bar.add_task("starting", total=None)
            meta, rows = run_load(target, options, progress=lambda m: bar.update(task, description=m))
    finally:
        target.close()
    meta["command"] = " ".join(sys.argv)
    render_table(rows, f"coordgan bench triton: {meta['source']}", meta["batching"], console)
    if json_out:
        report.write_text(json_out, report.to_json(meta, rows))
        console.print(f"wrote {json_out}")


def _print_published_ratio(rows, console) -> None:
    best = {}
    for r in rows:
        if r.get("status") == "ok" and r.get("vs_published") is not None and r["backend"] != "published":
            if r["batch"] not in best or r["vs_published"] > best[r["batch"]]["vs_published"]:
                best[r["batch"]] = r
    for b, r in sorted(best.items()):
        console.print(f"pipeline batch {b}: best {r['backend']} {r['throughput']:.2f} frames/s = "
                      f"{r['vs_published']:.1f}x the published path")


def register(app: typer.Typer) -> None:
    """Add `coordgan bench` to the main app."""
    app.command("bench")(bench)
