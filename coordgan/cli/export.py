"""`coordgan export onnx | verify | trt | lookup`: PyTorch -> ONNX -> TensorRT (the work is in export/).

torch/onnx/tensorrt are imported inside the commands only: `coordgan --help` starts without them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from coordgan.cli.common import positive_ints, status
from runtime.errors import CoordGANError
from runtime.terminal import console, tagged

app = typer.Typer(
    help="Export to ONNX (verified against PyTorch) and build TensorRT engines.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command("onnx")
def onnx_command(
    ckpt: Optional[Path] = typer.Argument(None, help="Checkpoint: ours (.safetensors) or the authors' public .pt; "
                                          "or omit it and pass --preset."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory to create (encoder.onnx, generator.onnx, manifest.json)."),
    uint8_input: bool = typer.Option(False, "--uint8-input", help="Encoder takes uint8 NHWC frames (base x base), "
                                     "scaled to [-1, 1] inside the graph."),
    generator_input: str = typer.Option("w", "--generator-input", help="Generator inputs: w (W / W+ codes, as the "
                                        "encoder gives) or z (through the mapping networks)."),
    fp16: bool = typer.Option(False, "--fp16", help="Half-precision weights and activations, float32 I/O."),
    only: Optional[str] = typer.Option(None, "--only", help="Export one model: encoder or generator."),
    opset: int = typer.Option(18, "--opset", help="ONNX opset: 18 (the exporter's own) up to the newest that "
                              "both the installed onnx and ONNX Runtime support (a value out of range is refused "
                              "with the range)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output directory."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Compare with PyTorch before publishing."),
    verify_batches: str = typer.Option("1,8", "--verify-batches", help="Batch sizes the verification runs at."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Instead of a checkpoint: this preset with random "
                                         "weights (seed 0), to try the export without training."),
    as_preset: Optional[str] = typer.Option(None, "--as-preset", help="The checkpoint's preset, checked against "
                                            "its shapes: an authors' .pt names none, and celeba-128, cars-128 and "
                                            "cats-128 share shapes (default: the first preset that fits)."),
    warp_grid: Optional[int] = typer.Option(None, "--warp-grid", help="Faster, approximate encoder: run the "
                                            "coordinate warping network on an N x N grid and upsample its map "
                                            "(default: the model's own grid, exact). Its cost in quality: "
                                            "benchmarks/bench_fast.py."),
    int8: bool = typer.Option(False, "--int8", help="Faster, approximate encoder: the warping network's hidden "
                              "layer (most of its arithmetic) in int8, calibrated on 64 structure codes of the "
                              "checkpoint's mapping network. Its cost in quality: benchmarks/bench_fast.py."),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help="With --int8: calibrate on up to 64 "
                                               "frames of this video or frame folder (your footage) instead."),
):
    """Export the encoder (+ warp network) and the generator of a checkpoint, or of a preset with random
    weights, to ONNX, verified against PyTorch."""
    from export.cache import ModelSource
    from export.onnx_export import ExportOptions, export_onnx
    from export.verify import print_report

    out_console = console()
    options = ExportOptions(uint8_input=uint8_input, generator_input=generator_input, fp16=fp16, only=only,
                            opset=opset, overwrite=overwrite, verify=verify,
                            verify_batches=positive_ints(verify_batches, "--verify-batches"), warp_grid=warp_grid,
                            int8=int8, calibration=calibration)
    with status(out_console) as say:
        source = ModelSource(ckpt, preset, progress=say, as_preset=as_preset)  # exactly one; a missing file or unknown preset fails now
        result = export_onnx(source, out, options, on_report=lambda r: print_report(r, out_console), progress=say)
    files = ", ".join(m["file"] for m in result.manifest["models"].values())
    out_console.print(f"wrote {result.directory}: {files}, manifest.json")


@app.command("verify")
def verify_command(
    directory: Path = typer.Argument(..., help="Export directory (with manifest.json)."),
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="The source checkpoint, if not where the manifest says."),
    batches: str = typer.Option("1,8", "--batches", help="Comma-separated batch sizes to compare at."),
):
    """Check an export directory: ONNX checker, shapes, ONNX Runtime and any TensorRT plan vs PyTorch."""
    from export.verify import print_report, verify_directory

    out_console = console()
    with status(out_console) as say:
        say("verifying against PyTorch")
        report = verify_directory(directory, ckpt=ckpt, batches=positive_ints(batches, "--batches"))
    print_report(report, out_console)
    if report.failures:
        raise CoordGANError(f"Verification of {directory} failed: {report.failures[0]}")


@app.command("trt")
def trt_command(
    directory: Path = typer.Argument(..., help="Export directory (with manifest.json)."),
    fp16: bool = typer.Option(False, "--fp16", help="Allow float16 kernels."),
    bf16: bool = typer.Option(False, "--bf16", help="Allow bfloat16 kernels."),
    min_batch: int = typer.Option(1, "--min-batch"),
    opt_batch: int = typer.Option(8, "--opt-batch"),
    max_batch: int = typer.Option(32, "--max-batch"),
    workspace_gb: float = typer.Option(4.0, "--workspace-gb", help="Workspace memory pool limit (GiB)."),
    timing_cache: Optional[Path] = typer.Option(None, "--timing-cache", help="Timing cache to load, reuse and save."),
    max_refs: int = typer.Option(4, "--max-refs", help="corr_lookup engine: most reference frames per query."),
    only: Optional[str] = typer.Option(None, "--only", help="Build one model: encoder, generator or corr_lookup "
                                       "(corr_lookup.onnx from `coordgan export lookup --out DIR`)."),
):
    """Build TensorRT engines (*.plan + *.plan.json) from the directory's ONNX models."""
    from export.tensorrt_build import EngineOptions, build_engines

    if fp16 and bf16:
        raise CoordGANError("Choose one of --fp16 and --bf16.")
    options = EngineOptions(precision="fp16" if fp16 else "bf16" if bf16 else "fp32", min_batch=min_batch,
                            opt_batch=opt_batch, max_batch=max_batch, max_refs=max_refs,
                            workspace_gb=workspace_gb, timing_cache=timing_cache, only=only)
    out_console = console()
    notes: list[str] = []
    with status(out_console) as say:
        plans = build_engines(directory, options, progress=say, notes=notes)
    for note in notes:
        out_console.print(tagged("note", f": {note}"))
    out_console.print("wrote " + ", ".join(str(p) for p in plans) + " (+ .plan.json sidecars)")


@app.command("lookup")
def lookup(
    out: Path = typer.Option(..., "--out", "-o", help="ONNX file to write (a name ending .onnx), or a folder "
                             "(made if missing): its corr_lookup.onnx, which `coordgan export trt` builds with "
                             "an export directory's models."),
    classes: int = typer.Option(..., "--classes", help="Class count C of the label probabilities (1 to 64)."),
    tau: float = typer.Option(0.01, "--tau", help="Softmax temperature of the soft lookup."),
    mode: str = typer.Option("soft", "--mode", help="soft, hard or topk."),
    k: Optional[int] = typer.Option(None, "--k", help="Neighbours kept in topk mode (1 to 64); only with --mode topk."),
    fp16: bool = typer.Option(False, "--fp16", help="float16 inputs (outputs stay float32 / int32)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing file."),
):
    """The correspondence lookup as one coordgan::CorrLookup node, for TensorRT's plugin."""
    from export.lookup_onnx import lookup_model, write_lookup_model
    from export.tensorrt_build import LOOKUP

    if k is not None and mode != "topk":  # k would be dropped from the graph without a word
        raise CoordGANError(f"--k sets the neighbours of --mode topk; give --mode topk or drop --k (mode is {mode}).")
    k = k or 0
    if out.suffix.lower() != ".onnx":  # a folder, as `--out exported/` names one: made once the op is valid
        lookup_model(classes, tau=tau, mode=mode, k=k, fp16=fp16)
        out.mkdir(parents=True, exist_ok=True)
        out = out / f"{LOOKUP}.onnx"
    path = write_lookup_model(out, classes, tau=tau, mode=mode, k=k, fp16=fp16, overwrite=overwrite)
    print(f"wrote {path}: coordgan::CorrLookup, C = {classes}, mode {mode}, tau {tau}"
          + (f", k {k}" if mode == "topk" else ""))


def register(parent: typer.Typer) -> None:
    parent.add_typer(app, name="export")
