"""`coordgan export onnx`: checkpoint -> encoder.onnx, generator.onnx, manifest.json (verified).

One entry point, `export_onnx`. Each model is traced with the dynamo exporter (opset 18, converted
to a newer one within `opset_range` on request; dynamic batch axis "batch"), then shaped for
deployment: every constant subgraph of reasonable size folded, the exporter's debug annotations
dropped, optionally converted to float16 with float32 I/O, stamped with the manifest's facts (the
opset as written) in metadata_props. Everything is built in a temp directory beside
the target and renamed into place only after verification passed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import logging
import os
import warnings
from pathlib import Path

from export import graph_tools, quantize
from export.manifest import MANIFEST, MODEL_FILES, build_manifest, model_metadata
from export.staging import staged_directory
from runtime.errors import CoordGANError

MODELS = tuple(MODEL_FILES)
GENERATOR_INPUTS = ("w", "z")
DEFAULT_OPSET = 18  # the dynamo exporter's own opset, and the oldest it writes


@functools.cache
def opset_range() -> tuple[int, int, str]:
    """(oldest, newest, what limits the newest): the opsets an export can be written at and verified.

    Newer than 18 the exporter converts with onnx's version converter, which stops at the installed
    onnx's newest opset; ONNX Runtime (which verifies and runs the export) refuses opsets newer than
    it knows, so the newest it loads is found by loading a one-node model at each candidate."""
    import onnx

    newest, limit = onnx.defs.onnx_opset_version(), f"onnx {onnx.__version__}"
    try:
        import onnxruntime
    except ImportError:
        return DEFAULT_OPSET, newest, limit
    for opset in range(newest, DEFAULT_OPSET - 1, -1):
        if _ort_loads(onnxruntime, opset):
            break
    if opset < newest:
        limit = f"ONNX Runtime {onnxruntime.__version__}"
    return DEFAULT_OPSET, opset, limit


def _ort_loads(onnxruntime, opset: int) -> bool:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    opts = onnxruntime.SessionOptions()
    opts.log_severity_level = 3
    try:
        onnxruntime.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception:  # onnxruntime's own types: "Opset N is under development ... support is till opset M"
        return False
    return True


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    uint8_input: bool = False  # encoder takes uint8 NHWC frames instead of float NCHW images
    generator_input: str = "w"  # "w": W / W+ codes as the encoder outputs; "z": through the mapping nets
    fp16: bool = False
    only: str | None = None  # "encoder" or "generator"
    opset: int = DEFAULT_OPSET
    overwrite: bool = False
    verify: bool = True
    verify_batches: tuple[int, ...] = (1, 8)
    warp_grid: int | None = None  # encoder: run the warping network on this coarser grid, upsampled (approximate)
    int8: bool = False  # encoder: the warping network's hidden layer in int8 (approximate; export/quantize.py)
    calibration: Path | None = None  # --int8: calibrate on this video or frame folder instead

    def models(self) -> tuple[str, ...]:
        return (self.only,) if self.only else MODELS

    def validate(self) -> None:
        if self.only is not None and self.only not in MODELS:
            raise CoordGANError(f"--only must be one of {', '.join(MODELS)}, not {self.only!r}.")
        if self.generator_input not in GENERATOR_INPUTS:
            raise CoordGANError(f"--generator-input must be w or z, not {self.generator_input!r}.")
        oldest, newest, limit = opset_range()
        if not oldest <= self.opset <= newest:
            raise CoordGANError(f"--opset must be {oldest} to {newest}, not {self.opset}: the exporter writes opset "
                                f"{oldest} and newer, and {limit} goes up to opset {newest}.")
        if self.warp_grid is not None and self.warp_grid < 2:
            raise CoordGANError(f"--warp-grid must be at least 2 pixels, got {self.warp_grid}.")
        if self.int8 and self.fp16:
            raise CoordGANError("Choose one of --int8 and --fp16: the int8 layer is calibrated in float32.")
        if self.int8 and self.only == "generator":
            raise CoordGANError("--int8 applies to the encoder; it cannot be used with --only generator.")
        if self.calibration is not None and not self.int8:
            raise CoordGANError("--calibration sets what --int8 is calibrated on; give --int8 too.")
        if self.calibration is not None:
            from runtime.io.video import open_frames

            open_frames(self.calibration)  # a missing or unreadable video fails now, not after the trace


@dataclasses.dataclass
class ExportResult:
    directory: Path
    manifest: dict
    report: object | None  # export.verify.VerifyReport when verified


def export_onnx(ckpt, out, options: ExportOptions = ExportOptions(), *, on_report=None,
                progress=None) -> ExportResult:
    """Export the checkpoint's encoder (+ warp network) and/or generator to ONNX under `out`.

    `ckpt` is a checkpoint file, a loaded coordgan.checkpoint.Checkpoint, or an export.cache.ModelSource
    (a checkpoint, or a preset's random weights saved once in the cache, where the manifest then points
    `coordgan export verify`), loaded once the destination is known to be writable.

    `on_report(report)` sees the verification report before the directory is published (the CLI
    prints it); a failed bound raises CoordGANError and leaves nothing behind.
    """
    options.validate()
    out = Path(out).absolute()
    step = progress or (lambda message: None)
    # The staging directory comes first: an unwritable destination fails before the slow part.
    with staged_directory(out, options.overwrite) as staging:
        import onnx

        from coordgan.checkpoint import load

        if isinstance(ckpt, (str, os.PathLike)):
            ck = load(ckpt)
        elif hasattr(ckpt, "describe"):  # a ModelSource (not imported here: export.cache imports this module)
            step(f"loading {ckpt.describe()}")
            ck = ckpt.checkpoint()
        else:
            ck = ckpt
        generator = ck.generator
        if "encoder" in options.models() and "e" not in ck.networks:
            hint = ("train one with `coordgan train-encoder --gen-ckpt CKPT`" if options.only == "encoder"
                    else "export the generator alone with --only generator")
            raise CoordGANError(f"Checkpoint {ck.path} has no encoder (it holds: {', '.join(ck.networks)}); {hint}.")
        encoder = ck.encoder if "encoder" in options.models() else None
        protos, entries = {}, {}
        for name in options.models():
            step(f"exporting {name}")
            protos[name], entries[name] = _export_model(name, encoder, generator, ck.config, options)
            written = graph_tools.opset(protos[name])
            if written != options.opset:  # the exporter logs a failed conversion and keeps opset 18
                raise CoordGANError(f"The exporter could not convert the {name} to opset {options.opset} (it wrote "
                                    f"opset {written}); export at opset {written} or another --opset.")
        manifest = build_manifest(config=ck.config, checkpoint_path=ck.path.absolute(), checkpoint_sha256=ck.sha256,
                                  checkpoint_source=ck.source, opset=written, fp16=options.fp16,  # as saved
                                  models=entries)
        for name, proto in protos.items():
            graph_tools.set_metadata(proto, model_metadata(manifest, name))
            try:
                onnx.save(proto, staging / MODEL_FILES[name])
            except OSError as exc:
                raise CoordGANError(f"Cannot write {MODEL_FILES[name]} under {out.parent}: {exc.strerror or exc}.") from None
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        report = None
        if options.verify:
            from export.verify import verify_directory

            step("verifying against PyTorch")
            report = verify_directory(staging, encoder=encoder, generator=generator,
                                      batches=options.verify_batches)
            report.directory = out  # name the published directory, not the staging one
            if on_report:
                on_report(report)
            if report.failures:
                raise CoordGANError(f"Export verification failed, nothing written to {out}: {report.failures[0]}")
    return ExportResult(out, manifest, report)


def _export_model(name, encoder, generator, cfg, options: ExportOptions):
    import torch

    from export.precision import to_float16
    from export.wrappers import EncoderWithWarp, GeneratorForExport

    d, base = cfg.style_dim, cfg.base_size
    if name == "encoder":
        if options.warp_grid is not None and options.warp_grid > base:
            raise CoordGANError(f"--warp-grid {options.warp_grid} is finer than the model's {base}x{base} grid; "
                                f"give {base} or less.")
        warp_grid = options.warp_grid if options.warp_grid != base else None
        module = EncoderWithWarp(encoder, generator, uint8_input=options.uint8_input, warp_grid=warp_grid)
        if options.uint8_input:
            example = (torch.randint(0, 256, (2, base, base, 3), dtype=torch.uint8),)
            input_names = ["frames"]
        else:
            example = (torch.rand(2, 3, base, base) * 2 - 1,)
            input_names = ["image"]
        output_names = ["corr_map", "w_struct", "w_texture"]
        details = {"uint8_input": options.uint8_input,
                   "input_layout": "NHWC uint8 frames, already base x base (no resize in the graph)"
                   if options.uint8_input else "NCHW float32 image in [-1, 1]",
                   "computes": "encoder, then the generator's coordinate warping network on w_struct"
                   + (f" on a {warp_grid}x{warp_grid} grid, bilinearly upsampled to {base}x{base} (an approximation)"
                      if warp_grid else "")}
        if warp_grid:
            details["warp_grid"] = warp_grid
    else:
        module = GeneratorForExport(generator, input_space=options.generator_input)
        if options.generator_input == "z":
            example = (torch.randn(2, d), torch.randn(2, d))
            input_names = ["z_struct", "z_texture"]
        else:
            example = (torch.randn(2, d), torch.randn(2, cfg.n_latent, d))
            input_names = ["w_struct", "w_texture"]
        output_names = ["image", "corr_map"]
        details = {"input_space": options.generator_input, "noise_mode": "const",
                   "computes": "mapping networks, warp, synthesis" if options.generator_input == "z"
                   else "warp, synthesis (W / W+ codes as the encoder outputs)"}
    proto = _trace(module.eval(), example, input_names, output_names, options.opset)
    proto = graph_tools.fold_constants(proto)
    graph_tools.strip_debug_metadata(proto)
    graph_tools.name_batch_axis(proto)
    if name == "encoder" and options.int8:
        if options.calibration is None:
            codes = quantize.generator_codes(generator, d)
            source = f"of the checkpoint's mapping network (seed {quantize.CALIBRATION_SEED})"
        else:
            codes = quantize.footage_codes(proto, options.calibration, base, options.uint8_input)
            source = f"the encoder gives for frames of {Path(options.calibration).resolve().name}"
        proto = quantize.quantize_warp(proto, codes)
        details["int8"] = {"layer": "the warping network's hidden Gemm", "weights": "int8 per channel, 7-bit range",
                           "activations": "uint8, MinMax range calibrated once",
                           "calibration": f"{len(codes)} structure code{'s' * (len(codes) != 1)} {source}"}
    if options.fp16:
        proto = to_float16(proto)
        proto = graph_tools.fold_constants(proto)  # Casts of weights feeding fp32 ops
    proto.producer_name = "coordgan-deploy"
    proto.doc_string = f"CoordGAN {name} ({cfg.name}); see metadata_props coordgan.*"
    entry = {"file": MODEL_FILES[name], **graph_tools.io_specs(proto), **details}
    return proto, entry


def _trace(module, example, input_names, output_names, opset):
    import torch

    batch = torch.export.Dim("batch", min=1)
    dynamic = tuple({0: batch} for _ in example)
    # The exporter narrates each stage on stdout, warns about internals and logs a failed opset
    # conversion with its traceback (export_onnx checks the opset written): keep the CLI output ours.
    converter_log = logging.getLogger("onnxscript")
    level = converter_log.level
    converter_log.setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(module, example, dynamo=True, opset_version=opset,
                                        input_names=input_names, output_names=output_names,
                                        dynamic_shapes=dynamic, optimize=True, verbose=False)
        except Exception as exc:  # an exporter failure is a bug here, but say what failed in one line
            raise RuntimeError(f"torch.onnx.export failed for {type(module).__name__}: {exc}") from exc
        finally:
            converter_log.setLevel(level)
    return program.model_proto
