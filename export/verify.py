"""Verification of an export directory: structure, then every backend against PyTorch.

Structure: the full ONNX checker, strict shape inference, declared I/O against the manifest
(dynamic "batch" axis), no control flow, no foldable constant subgraph left that should have been
folded, metadata_props consistent with the manifest. Numerics, as Polygraphy compares runners:
each backend that can run a model of the directory, opened through the one `runtime.backends`
interface (ONNX Runtime on the CPU for <model>.onnx, and OpenVINO on the same file where it is
installed; TensorRT for a <model>.plan beside it, where TensorRT and a GPU are present; a note says
what was not checked), against the untouched PyTorch models, on random and fixed inputs, at each
batch size. OpenVINO (fp32 inference precision) is held to ONNX Runtime's bounds.

Bounds (max |diff|): fp32 models 1e-4 on correspondence maps and 1e-3 on images. fp16 models are
held to FP16_BOUNDS and every report prints the measured values: ONNX Runtime CPU measured at most
1.3e-4 (maps) and 3.5e-3 (images) on celeba-128, 2.3e-4 and 5.1e-3 on tiny (random weights), and
the bounds leave room for trained weights. W codes are reported and bounded only through what they
drive (the correspondence map, the image).
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import numpy as np

from export import graph_tools
from export.manifest import model_metadata, read_manifest
from runtime.errors import CoordGANError, first_line

FP32_BOUNDS = {"corr_map": 1e-4, "image": 1e-3}
FP16_BOUNDS = {"corr_map": 2e-3, "image": 3e-2}
# TensorRT plans (not yet measured on a GPU): an fp32 build may run TF32 (TensorRT's default), so it
# gets the fp16 bounds; bf16 has 3 fewer mantissa bits than fp16, so 8x those.
ENGINE_BOUNDS = {"fp32": FP16_BOUNDS, "fp16": FP16_BOUNDS, "bf16": {k: 8 * v for k, v in FP16_BOUNDS.items()}}
# An --int8 encoder (its warping network's hidden layer in int8) against the float32 PyTorch model: a
# sanity bound that a broken quantization (wrong scales, saturation) breaks by an order of magnitude;
# what the approximation costs is measured on a video by benchmarks/bench_fast.py.
INT8_CORR_BOUND = 0.1
CASES = ("random", "fixed")


@dataclasses.dataclass
class Check:
    model: str
    output: str
    case: str
    batch: int
    max_abs: float
    bound: float | None
    backend: str = "onnxruntime"

    @property
    def passed(self) -> bool:
        return self.bound is None or (np.isfinite(self.max_abs) and self.max_abs <= self.bound)


@dataclasses.dataclass
class ModelReport:
    name: str
    op_counts: Counter = dataclasses.field(default_factory=Counter)
    problems: list[str] = dataclasses.field(default_factory=list)  # structural failures, one sentence each
    kept_unfolded: list[str] = dataclasses.field(default_factory=list)
    checks: list[Check] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class VerifyReport:
    directory: Path
    fp16: bool
    bounds: dict
    models: dict[str, ModelReport]
    notes: list[str] = dataclasses.field(default_factory=list)  # what could not be checked here, and why

    @property
    def failures(self) -> list[str]:
        out = [f"{m.name}: {p}" for m in self.models.values() for p in m.problems]
        for m in self.models.values():
            for c in m.checks:
                if not c.passed:
                    out.append(f"{m.name} {c.output} on {c.backend} differs from PyTorch by {c.max_abs:.3g} > "
                               f"{c.bound:g} ({c.case} inputs, batch {c.batch}).")
        return out

    def max_diff(self, model: str, output: str, backend: str = "onnxruntime") -> float:
        return max(c.max_abs for c in self.models[model].checks if c.output == output and c.backend == backend)


def resolve_checkpoint(manifest: dict, directory: Path, ckpt=None) -> Path:
    """The checkpoint the export came from: --ckpt, else the manifest's path; SHA-256 must match."""
    from runtime.fileio import sha256_file

    expected = manifest["checkpoint"]["sha256"]
    if ckpt is not None:
        path = Path(ckpt)
        if not path.is_file():
            raise CoordGANError(f"Checkpoint {path} does not exist or is not a file.")
        if sha256_file(path) != expected:
            raise CoordGANError(f"Checkpoint {path} is not the one {directory} was exported from "
                                f"(its SHA-256 differs from the manifest's {expected[:16]}...).")
        return path
    path = Path(manifest["checkpoint"]["path"])
    if not path.is_absolute():
        path = directory / path
    if not path.is_file():
        raise CoordGANError(f"The checkpoint {directory} was exported from ({path}) is not there; pass --ckpt PATH.")
    if sha256_file(path) != expected:
        raise CoordGANError(f"Checkpoint {path} has changed since the export (SHA-256 mismatch); "
                            "pass --ckpt with the original file.")
    return path


def verify_directory(directory, *, ckpt=None, encoder=None, generator=None, batches=(1, 8)) -> VerifyReport:
    """Verify every model of an export directory; pass the networks, or let the manifest find them."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    if generator is None:
        from coordgan.checkpoint import load

        ck = load(resolve_checkpoint(manifest, directory, ckpt))
        generator = ck.generator
        encoder = ck.encoder if "encoder" in manifest["models"] else None
    bounds = FP16_BOUNDS if manifest["fp16"] else FP32_BOUNDS
    report = VerifyReport(directory, manifest["fp16"], bounds, {})
    for name, entry in manifest["models"].items():
        report.models[name] = _verify_model(directory, manifest, name, entry, encoder, generator,
                                            _model_bounds(entry, bounds), batches)
        if report.models[name].problems:
            continue
        _verify_openvino(directory / entry["file"], report, name, entry, encoder, generator,
                         _model_bounds(entry, bounds), batches)
        plan = directory / f"{name}.plan"
        if plan.is_file():
            _verify_engine(plan, report, name, entry, encoder, generator, batches)
    return report


def _model_bounds(entry: dict, bounds: dict) -> dict:
    if entry.get("int8"):
        return {**bounds, "corr_map": max(bounds["corr_map"], INT8_CORR_BOUND)}
    return bounds


def _verify_openvino(path: Path, report: VerifyReport, name, entry, encoder, generator, bounds, batches) -> None:
    """The same ONNX file compiled by OpenVINO, through the same interface and inputs as ONNX Runtime."""
    from runtime.backends import open_backend

    try:
        with open_backend(path, backend="openvino") as backend:
            report.models[name].checks += compare_backend(backend, name, entry, encoder, generator, bounds, batches)
    except CoordGANError as exc:  # not installed, or it cannot compile this model
        report.notes.append(f"{path.name} was not checked on OpenVINO: {str(exc).rstrip('.')}.")
    except RuntimeError as exc:  # OpenVINO's own errors while running
        from runtime.backends.openvino_backend import ov_reason

        report.notes.append(f"{path.name} was not checked on OpenVINO: {ov_reason(exc)}.")


def _verify_engine(plan: Path, report: VerifyReport, name, entry, encoder, generator, batches) -> None:
    """A TensorRT plan of the model, through the same interface and inputs as the ONNX model."""
    from runtime.backends import open_backend

    try:
        backend = open_backend(plan, backend="tensorrt")
    except CoordGANError as exc:  # no TensorRT, no GPU, a plan of another version
        report.notes.append(f"{plan.name} was not checked: {str(exc).rstrip('.')}.")
        return
    try:
        sidecar = plan.with_name(plan.name + ".json")
        built = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
        bounds = _model_bounds(entry, ENGINE_BOUNDS.get(built.get("precision", "fp32"), ENGINE_BOUNDS["bf16"]))
        lo, hi = backend.ranges[backend.inputs[0].name][0][0], backend.ranges[backend.inputs[0].name][1][0]
        fitting = [b for b in batches if lo <= b <= hi] or [lo]  # the batches its profile takes
        report.models[name].checks += compare_backend(backend, name, entry, encoder, generator, bounds, fitting)
    except (CoordGANError, ValueError, KeyError) as exc:  # a damaged sidecar, a plan that fails to run
        report.notes.append(f"{plan.name} was not checked: {first_line(exc)}.")
    finally:
        backend.close()


def _verify_model(directory, manifest, name, entry, encoder, generator, bounds, batches) -> ModelReport:
    import onnx

    path = directory / entry["file"]
    rep = ModelReport(name)
    try:
        model = onnx.load(str(path))
    except Exception as exc:
        raise CoordGANError(f"{path} is not a readable ONNX model ({first_line(exc)}).") from None
    rep.op_counts = graph_tools.op_counts(model)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        rep.problems.append(f"the ONNX checker rejects it ({first_line(exc)}).")
        return rep
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except onnx.shape_inference.InferenceError as exc:
        rep.problems.append(f"shape inference fails on it ({first_line(exc)}).")
        return rep
    declared = graph_tools.io_specs(inferred)
    for key in ("inputs", "outputs"):
        if declared[key] != entry[key]:
            rep.problems.append(f"its {key} {declared[key]} differ from the manifest's {entry[key]}.")
        for spec in declared[key]:
            if spec["shape"][:1] != [graph_tools.BATCH]:
                rep.problems.append(f"{spec['name']} has no dynamic '{graph_tools.BATCH}' axis 0.")
    if graph_tools.opset(model) != manifest["opset"]:
        rep.problems.append(f"it is opset {graph_tools.opset(model)}, not the manifest's {manifest['opset']}.")
    flow = graph_tools.control_flow_nodes(model)
    if flow:
        rep.problems.append(f"it has control flow nodes ({', '.join(flow[:3])}).")
    bad, kept = graph_tools.significant_unfolded(inferred)
    if bad:
        rep.problems.append(f"{len(bad)} constant subgraph(s) were not folded (first: {bad[0][0].op_type} "
                            f"{bad[0][0].name}).")
    rep.kept_unfolded = [f"{n.op_type} -> {'?' if size is None else f'{size:,}'} elements" for n, size in kept]
    meta = graph_tools.read_metadata(model)
    expected_meta = json.loads(json.dumps(model_metadata(manifest, name)))
    stale = sorted(k for k, v in expected_meta.items() if meta.get(k) != v)
    if stale:
        rep.problems.append(f"its metadata_props disagree with manifest.json ({', '.join(stale[:3])}).")
    if rep.problems:
        return rep
    from runtime.backends.ort_backend import OrtBackend, ort_reason

    try:
        backend = OrtBackend(path, device="cpu")
        try:
            rep.checks = compare_backend(backend, name, entry, encoder, generator, bounds, batches)
        finally:
            backend.close()
    except CoordGANError as exc:  # ONNX Runtime cannot load or run it
        rep.problems.append(f"ONNX Runtime cannot run it ({str(exc).rstrip('.')}).")
    except Exception as exc:  # onnxruntime's own exception types: run failures
        if not type(exc).__module__.startswith("onnxruntime"):
            raise
        rep.problems.append(f"ONNX Runtime cannot run it ({ort_reason(exc)}).")
    return rep


def compare_backend(backend, name, entry, encoder, generator, bounds, batches) -> list[Check]:
    """One backend (runtime.backends.Backend) running a model against the PyTorch reference's outputs."""
    from export.wrappers import reference_outputs

    output_names = [o["name"] for o in entry["outputs"]]
    checks = []
    for batch in batches:
        for case in CASES:
            feeds = make_inputs(entry["inputs"], batch, case)
            got = backend.run(feeds)
            want = reference_outputs(encoder, generator, name, feeds, uint8_input=entry.get("uint8_input", False),
                                     input_space=entry.get("input_space", "w"), warp_grid=entry.get("warp_grid"))
            for out in output_names:
                diff = float(np.max(np.abs(got[out].astype(np.float64) - want[out].numpy().astype(np.float64))))
                checks.append(Check(name, out, case, batch, diff, bounds.get(out), backend.name))
    return checks


def make_inputs(specs: list[dict], batch: int, case: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs for one comparison: "random" (seeded) or "fixed" (smooth deterministic patterns)."""
    rng = np.random.default_rng(seed + batch)
    feeds = {}
    for spec in specs:
        shape = [batch if d == graph_tools.BATCH else d for d in spec["shape"]]
        n = int(np.prod(shape))
        if spec["dtype"] == "uint8":
            x = rng.integers(0, 256, shape) if case == "random" else (np.arange(n) * 7 % 256).reshape(shape)
            feeds[spec["name"]] = x.astype(np.uint8)
        elif spec["name"] == "image":
            x = rng.uniform(-1, 1, shape) if case == "random" else np.sin(np.arange(n) * 0.05).reshape(shape)
            feeds[spec["name"]] = x.astype(np.float32)
        else:  # latent codes
            x = rng.standard_normal(shape) if case == "random" else np.cos(np.arange(n) * 0.37).reshape(shape)
            feeds[spec["name"]] = x.astype(np.float32)
    return feeds


def print_report(report: VerifyReport, console=None) -> None:
    """Node counts by op type, structural findings, and the measured differences (rich tables)."""
    from rich.table import Table
    from rich.text import Text

    from runtime import terminal

    console = console or terminal.console()
    names = list(report.models)
    ops = Table(title=f"ONNX nodes by op type ({report.directory.name})")
    ops.add_column("op")
    for n in names:
        ops.add_column(n, justify="right")
    all_ops = sorted(set().union(*(m.op_counts for m in report.models.values())))
    for op in all_ops:
        ops.add_row(op, *(str(report.models[n].op_counts.get(op, "")) for n in names))
    ops.add_row(Text("total", style="bold"),
                *(Text(str(sum(report.models[n].op_counts.values())), style="bold") for n in names))
    console.print(ops)
    for m in report.models.values():
        for line in m.kept_unfolded:
            console.print(f"{m.name}: constant subgraph kept unfolded on purpose (size): {line}")
    precision = "fp16" if report.fp16 else "fp32"
    diffs = Table(title=f"Backends vs PyTorch, {precision} export: max |diff|")
    for col in ("model", "backend", "output", "inputs", "batch", "max |diff|", "bound", ""):
        diffs.add_column(col, justify="right" if col in ("batch", "max |diff|", "bound") else "left",
                         no_wrap=col in ("backend", "max |diff|"))
    for m in report.models.values():
        for c in m.checks:
            ok = Text("ok", style="green") if c.passed else Text("FAIL", style="red")
            diffs.add_row(m.name, c.backend, c.output, c.case, str(c.batch), f"{c.max_abs:.2e}",
                          "-" if c.bound is None else f"{c.bound:g}", ok if c.bound is not None else "")
    console.print(diffs)
    for note in report.notes:
        console.print(terminal.tagged("note", f": {note}"))
    if report.fp16:
        measured = {f"{m}/{o}": report.max_diff(m, o) for m, mr in report.models.items()
                    for o in {c.output for c in mr.checks}}
        console.print("fp16 measured bounds: " + ", ".join(f"{k} {v:.2e}" for k, v in sorted(measured.items())))
    for line in report.failures:
        console.print(terminal.tagged("FAIL", f" {line}", "red"))
    if not report.failures:
        console.print(terminal.tagged("verified", f" {report.directory}", "green"))
