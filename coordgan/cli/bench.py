"""`coordgan bench`: latency, throughput and memory of every model and backend, side by side.

    coordgan bench encoder --preset celeba-128 --batch 1,8
    coordgan bench pipeline --ckpt ckpt.pt --backends published,torch,ort-cpu --json run.json
    coordgan bench triton --url 127.0.0.1:8001 --model coordgan_encoder --concurrency 1,2,4,8,16
    coordgan bench compare before.json after.json --plot compare.png

The work is in coordgan.bench (the driver, torch runners) and runtime.bench (timing, runtime-backend
runners, reports, the Triton load test); torch and the runners load inside the commands.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from coordgan.cli.common import positive_ints, status
from runtime.errors import CoordGANError
from runtime.terminal import console

app = typer.Typer(help="Latency / throughput / memory of every target on every backend, and Triton load tests.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

BACKENDS_HELP = ("Comma-separated: published (pipeline only: the authors' evaluation path), torch, torch-compile, "
                 "ort-cpu, ort-cuda, openvino (CPU), trt, triton. Default: all; unavailable ones are listed as skipped with "
                 "the reason.")
PLOT_HELP = ("PNG: latency (p50, p99) and throughput over batch sizes, a line per backend, labelled with the "
             "machine and date (needs matplotlib).")
TARGET_HELP = {
    "encoder": "Encoder + warp network: image -> correspondence map and codes.",
    "generator": "Generator: W / W+ codes -> image.",
    "lookup": "The correspondence lookup: query maps against the reference memory -> labels.",
    "pipeline": "What `coordgan propagate` runs per frame: frames decoded -> encoder -> lookup in the memory -> "
                "upsampled labels -> palette PNGs written (published: the authors' evaluation path).",
}


def _wide_console():
    out = console()
    return out if out.is_terminal else console(width=200)  # logs and pipes: one line per table row


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
        shapes[name] = positive_ints(dims, f"--shape {name}")
    return shapes


def _target_command(target: str):
    def command(
        ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="Checkpoint: ours (.safetensors) or the authors' "
                                            ".pt."),
        preset: Optional[str] = typer.Option(None, "--preset", help="Random weights of this preset (timing does "
                                             "not depend on the values)."),
        backends: Optional[str] = typer.Option(None, "--backends", help=BACKENDS_HELP),
        batch: str = typer.Option("1", "--batch", help="Batch sizes to sweep, comma-separated (e.g. 1,2,4,8)."),
        precision: str = typer.Option("fp32", "--precision", help="fp32, fp16 or bf16 (fp16: torch on CUDA, ONNX "
                                      "exported with --fp16; bf16: torch on CUDA; TensorRT plans run as built)."),
        warmup: int = typer.Option(3, "--warmup", help="Untimed calls per batch size."),
        iters: int = typer.Option(20, "--iters", help="Timed calls per batch size."),
        max_time: Optional[float] = typer.Option(None, "--max-time", help="Stop a batch size's timed loop after "
                                                 "this many seconds (at least one call is always timed)."),
        threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch and ONNX Runtime "
                                              "(default: their own default)."),
        onnx_dir: Optional[Path] = typer.Option(None, "--onnx-dir", help="Existing ONNX export directory for "
                                                "ort-* (default: export on the fly into the cache)."),
        trt_dir: Optional[Path] = typer.Option(None, "--trt-dir", help="Directory with encoder.plan / "
                                               "generator.plan."),
        url: Optional[str] = typer.Option(None, "--url", help="Triton server for the triton backend: "
                                          "triton://host:port (model named after the target) or "
                                          "triton://host:port/model."),
        lookup_method: str = typer.Option("auto", "--lookup-method", help="CPU lookup: dense, sparse or auto."),
        gpu_lookup: str = typer.Option("cuda", "--gpu-lookup", help="Lookup beside GPU backends: cuda (the fused "
                                       "kernel) or cuda-sparse (the sparse kernels, neglected mass <= 1e-4)."),
        refs: int = typer.Option(1, "--refs", help="Reference frames in the lookup's memory (R)."),
        classes: int = typer.Option(8, "--classes", help="Label classes (C)."),
        tau: float = typer.Option(0.01, "--tau", help="Softmax temperature of the lookup."),
        frame_size: Optional[str] = typer.Option(None, "--frame-size", help="Pipeline frame size HxW (default: "
                                                 "the model's canonical size)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the random weights (--preset) and inputs."),
        cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="ONNX export cache (default: "
                                                 "$COORDGAN_CACHE, else $XDG_CACHE_HOME/coordgan or "
                                                 "~/.cache/coordgan)."),
        json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results as JSON."),
        csv_out: Optional[Path] = typer.Option(None, "--csv", help="Write the results as CSV."),
        plot: Optional[Path] = typer.Option(None, "--plot", help=PLOT_HELP),
    ):
        from coordgan.bench import BenchOptions, run_bench
        from export.cache import ModelSource
        from runtime.bench import report

        options = BenchOptions(
            target=target, backends=tuple(b.strip() for b in backends.split(",") if b.strip()) if backends else (),
            batches=positive_ints(batch, "--batch"), precision=precision, warmup=warmup, iters=iters,
            max_time_s=max_time, threads=threads, onnx_dir=onnx_dir, trt_dir=trt_dir, url=url,
            lookup_method=lookup_method, gpu_lookup=gpu_lookup, refs=refs, classes=classes, tau=tau,
            frame_size=_frame_size(frame_size), seed=seed)
        options.validate()
        _check_outputs(json_out, csv_out, plot=plot)
        out = _wide_console()
        with status(out) as say:
            source = ModelSource(ckpt=ckpt, preset=preset, seed=seed, cache=cache_dir, progress=say)
            meta, rows = run_bench(options, source, progress=say)
        meta["command"] = " ".join(sys.argv)
        report.render_table(rows, title=f"coordgan bench {target}: {meta['workload']} ({meta['source']})",
                            console=out)
        _print_published_ratio(rows, out)
        if report.ok_rows(rows):  # a file of nothing but skips would read as a result
            for path, text in ((json_out, lambda: report.to_json(meta, rows)),
                               (csv_out, lambda: report.to_csv(rows))):
                if path:
                    report.write_text(path, text())
                    out.print(f"wrote {path}")
            if plot:
                report.render_plot(rows, plot, meta, title=f"coordgan bench {target}: {meta['workload']}")
                out.print(f"wrote {plot}")
        _fail_unless_measured(rows)

    command.__doc__ = (f"{TARGET_HELP[target]} Latency (p50/p90/p99/mean), throughput and peak memory on every "
                       "backend.")
    return command


def _check_outputs(*paths, plot: Optional[Path] = None) -> None:
    """Result files (None: not asked for) refused now, not after minutes of measuring; folders made;
    a plot without matplotlib too."""
    from runtime.fileio import check_target

    for path in (*paths, plot):
        if path is not None:
            check_target(path, make_folder=True)
    if plot is not None:
        from runtime.bench.report import check_plotting

        check_plotting()


def _fail_unless_measured(rows) -> None:
    """Exit non-zero (after the table) when nothing was timed or a row failed: scripts and CI see it."""
    from runtime.bench import report

    problem = report.failures(rows)
    if problem:
        raise CoordGANError(problem)


def _print_published_ratio(rows, out) -> None:
    best = {}
    for r in rows:
        if r.get("status") == "ok" and r.get("vs_published") is not None and r["backend"] != "published":
            if r["batch"] not in best or r["vs_published"] > best[r["batch"]]["vs_published"]:
                best[r["batch"]] = r
    for b, r in sorted(best.items()):
        out.print(f"pipeline batch {b}: best {r['backend']} {r['throughput']:.2f} frames/s = "
                  f"{r['vs_published']:.1f}x the published path")


for _target in TARGET_HELP:
    app.command(_target)(_target_command(_target))


@app.command("triton")
def triton(
    url: str = typer.Option(..., "--url", help="Triton server: HOST:PORT, triton://host:port (gRPC) or "
                            "triton+http://host:port, either optionally ending in /MODEL."),
    model: Optional[str] = typer.Option(None, "--model", help="The served model to load-test (e.g. "
                                        "coordgan_encoder), unless --url names it."),
    batch: str = typer.Option("1", "--batch", help="The batch of each request, comma-separated to sweep."),
    concurrency: str = typer.Option("1,2,4,8,16", "--concurrency", help="Closed-loop clients per level, "
                                    "comma-separated."),
    protocol: Optional[str] = typer.Option(None, "--protocol", help="grpc or http (default: the --url scheme's, "
                                           "else grpc)."),
    requests: Optional[int] = typer.Option(None, "--requests", help="Timed requests per level, shared by its "
                                           "clients (default 100, or unbounded with --duration)."),
    duration: Optional[float] = typer.Option(None, "--duration", help="Seconds per level (with --requests: "
                                             "whichever ends first)."),
    shape: Optional[List[str]] = typer.Option(None, "--shape", help="NAME:D1,D2 for inputs with -1 dims (dims "
                                              "without the batch; repeatable)."),
    warmup: int = typer.Option(3, "--warmup", help="Untimed requests per client and level."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random inputs."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results as JSON."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="PNG: throughput and latency (p50, p99) per "
                                        "concurrency, a line per batch (needs matplotlib)."),
):
    """A perf_analyzer-style load test of a served model: latency, throughput, Triton's queue / compute times."""
    from runtime.bench import report
    from runtime.bench.triton_load import LoadOptions, render_table, run_load
    from runtime.bench.triton_target import TritonTarget

    options = LoadOptions(concurrency=positive_ints(concurrency, "--concurrency"),
                          batches=positive_ints(batch, "--batch"),
                          requests=requests if requests is not None or duration is not None else 100,
                          duration_s=duration, warmup=warmup, shapes=_shapes(shape), seed=seed)
    options.validate()
    _check_outputs(json_out, plot=plot)
    out = _wide_console()
    target = TritonTarget(url, model, protocol)
    try:
        with status(out) as say:
            meta, rows = run_load(target, options, progress=say)
    finally:
        target.close()
    meta["command"] = " ".join(sys.argv)
    render_table(rows, f"coordgan bench triton: {meta['source']}", meta["batching"], out)
    if json_out and report.ok_rows(rows):
        report.write_text(json_out, report.to_json(meta, rows))
        out.print(f"wrote {json_out}")
    if plot and report.ok_rows(rows):
        report.render_plot(rows, plot, meta, title=f"coordgan bench triton: {meta['source']}")
        out.print(f"wrote {plot}")
    _fail_unless_measured(rows)


@app.command("compare")
def compare(
    first: Path = typer.Argument(..., metavar="A", help="A result of `coordgan bench ... --json`."),
    second: Path = typer.Argument(..., metavar="B", help="Another one, compared against A (ratios B / A)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the comparison as JSON."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="PNG: p50 (with p99) of A and B over batch sizes, "
                                        "and B / A per row (needs matplotlib)."),
):
    """Two results side by side: the rows both have (target, backend, batch), with B / A ratios."""
    import json

    from runtime.bench import report

    _check_outputs(json_out, plot=plot)
    a, b = (_concurrency_in_backend(report.load_results(f)) for f in (first, second))
    rows = report.compare(a, b)
    if not rows:
        raise CoordGANError(f"{first} and {second} have no timed rows in common (same target, backend and batch).")
    out = _wide_console()
    report.render_compare(rows, first.name, second.name, out)
    if json_out:
        report.write_text(json_out, json.dumps({"a": str(first), "b": str(second), "rows": rows}, indent=2) + "\n")
    if plot:
        report.render_compare_plot(a, b, plot, first.name, second.name)
        out.print(f"wrote {plot}")


def _concurrency_in_backend(data: dict) -> dict:
    """Triton load-test rows differ by concurrency too: fold it into the backend, which compare() matches on."""
    for r in data["rows"]:
        if r.get("concurrency") is not None:
            r["backend"] = f"{r['backend']} x{r['concurrency']}"
    return data


def register(parent: typer.Typer) -> None:
    parent.add_typer(app, name="bench")
