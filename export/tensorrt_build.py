"""`coordgan export trt`: TensorRT engines (*.plan + JSON sidecar) from an ONNX export directory.

TensorRT 10 and 11 Python API. Networks come from the ONNX parser (explicit batch: the only mode
since TensorRT 10), with one optimization profile spanning --min/--opt/--max-batch on every
input's "batch" axis, a workspace pool limit, and one timing cache that is loaded from
--timing-cache, shared by every build of the run and saved back (atomically), so rebuilding a
model, or building its sibling, skips the kernel timing already done.

Precision: on TensorRT 10 the fp32 ONNX is built with BuilderFlag.FP16/BF16 (weak typing). TensorRT
11 removed those flags: networks are strongly typed, so the precision must be in the graph; the
fp32 ONNX is converted in memory (export.precision, float32 I/O, sensitive ops in float32) and the
network is created STRONGLY_TYPED. An fp16 export directory is always built strongly typed.

The lookup graph of `coordgan export lookup`, saved as corr_lookup.onnx in the export directory,
is built beside the models: its reference count gets the range 1..--max-refs and its spatial axes
the grid of the export's correspondence maps (the preset's base_size), fixed.

If `export/plugin/trt_plugin.py` exists (the TensorRT plugin of the fused correspondence lookup,
`coordgan::CorrLookup`), it is imported and its `register()` called before parsing, so the parser
can resolve the custom op.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
from pathlib import Path

from export.manifest import read_manifest
from runtime.errors import CoordGANError, first_line
from runtime.fileio import atomic_write, sha256_file

PLUGIN_MODULE = "export.plugin.trt_plugin"
LOOKUP = "corr_lookup"  # corr_lookup.onnx in an export directory: the CorrLookup graph
SPATIAL_AXES = ("hq", "wq", "hk", "wk")
PRECISIONS = ("fp32", "fp16", "bf16")


@dataclasses.dataclass(frozen=True)
class EngineOptions:
    precision: str = "fp32"
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 32
    max_refs: int = 4  # lookup engine: reference frames per query (annotated + memory)
    workspace_gb: float = 4.0
    timing_cache: Path | None = None
    only: str | None = None

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise CoordGANError(f"Precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}.")
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise CoordGANError(f"Batch sizes must satisfy 1 <= min ({self.min_batch}) <= opt ({self.opt_batch}) "
                                f"<= max ({self.max_batch}).")
        if self.max_refs < 1:
            raise CoordGANError(f"--max-refs must be at least 1, not {self.max_refs}.")
        if self.workspace_gb <= 0:
            raise CoordGANError(f"--workspace-gb must be positive, not {self.workspace_gb}.")


def import_tensorrt():
    """The tensorrt module, or a one-sentence CoordGANError saying what is missing."""
    if importlib.util.find_spec("tensorrt") is None:
        raise CoordGANError("TensorRT is not installed, so no engine can be built here: "
                            "install the tensorrt Python package on a machine with an NVIDIA GPU.")
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:  # a wheel without its CUDA libraries
        raise CoordGANError(f"TensorRT is installed but cannot be loaded ({first_line(exc)}).") from None
    return trt


def load_plugin(required: bool) -> tuple[str | None, str | None]:
    """Import and register the CorrLookup plugin module when its file is present.

    Returns (module name or None, warning or None). A plugin that fails to import is an error
    only when a model to build has custom ops; otherwise the build goes on without it.
    """
    try:
        spec = importlib.util.find_spec(PLUGIN_MODULE)
    except ModuleNotFoundError:
        spec = None
    if spec is None:
        if required:
            raise CoordGANError(f"The models use custom ops but the TensorRT plugin module {PLUGIN_MODULE} "
                                "is not there.")
        return None, None
    try:
        module = importlib.import_module(PLUGIN_MODULE)
        if callable(getattr(module, "register", None)):  # the module registers on request, not on import
            module.register()
    except Exception as exc:
        message = f"The TensorRT plugin {PLUGIN_MODULE} failed to load ({first_line(exc)})"
        if required:
            raise CoordGANError(message + ".") from None
        return None, message + "; the models need no custom op, so the build goes on without it."
    return PLUGIN_MODULE, None


def custom_ops(onnx_path: Path) -> set[str]:
    """domain::op of every node outside the standard ONNX domains (e.g. coordgan::CorrLookup)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return {f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in ("", "ai.onnx")}


def build_engines(directory, options: EngineOptions = EngineOptions(), progress=None, notes=None) -> list[Path]:
    """Build one engine per model of the export directory; returns the .plan paths.

    `notes`, a list, receives what the user should read (e.g. a plugin that could not be loaded).
    """
    options.validate()
    directory = Path(directory)
    manifest = read_manifest(directory)  # a bad directory is reported before TensorRT is looked for
    files = model_files(directory, manifest)
    names = [options.only] if options.only else list(files)
    for name in names:
        if name not in files:
            raise CoordGANError(f"{directory} has no {name} model (it holds: {', '.join(files)}).")
    if manifest["fp16"] and options.precision == "bf16":
        raise CoordGANError(f"{directory} holds float16 models; export fp32 ONNX to build bf16 engines.")
    if any(manifest["models"][n].get("int8") for n in names if n in manifest["models"]):
        raise CoordGANError(f"{directory} holds an --int8 encoder, quantized for ONNX Runtime on the CPU (uint8 "
                            "activations, which TensorRT does not take); build engines from an export without --int8.")
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    try:
        builder = trt.Builder(logger)
    except Exception as exc:  # no driver / no device
        raise CoordGANError(f"TensorRT found no usable NVIDIA GPU ({first_line(exc)}).") from None
    if builder is None:
        raise CoordGANError("TensorRT found no usable NVIDIA GPU (the builder could not be created).")
    trt.init_libnvinfer_plugins(logger, "")
    needed = set().union(*(custom_ops(directory / files[n]) for n in names))
    plugin, warning = load_plugin(required=bool(needed))
    if warning and notes is not None:
        notes.append(warning)
    strongly_typed_only = not hasattr(trt.BuilderFlag, "FP16")  # TensorRT 11

    config_probe = builder.create_builder_config()
    cache_bytes = b""
    if options.timing_cache and Path(options.timing_cache).is_file():
        cache_bytes = Path(options.timing_cache).read_bytes()
    timing_cache = config_probe.create_timing_cache(cache_bytes)  # shared by every build below
    if timing_cache is None:
        raise CoordGANError(f"{options.timing_cache} is not a TensorRT timing cache of this version.")

    plans = []
    for name in names:
        if progress:
            progress(f"building {name} engine ({options.precision})")
        plans.append(_build_one(trt, builder, logger, directory, manifest, name, files[name], options,
                                timing_cache, strongly_typed_only, plugin))
        if options.timing_cache:  # after each build: a later failure keeps the timings measured so far
            _save_timing_cache(timing_cache, options.timing_cache)
    return plans


def model_files(directory: Path, manifest: dict) -> dict[str, str]:
    """name -> ONNX file of what `export trt` builds: the manifest's models and corr_lookup.onnx if present."""
    files = {name: entry["file"] for name, entry in manifest["models"].items()}
    if (Path(directory) / f"{LOOKUP}.onnx").is_file():
        files[LOOKUP] = f"{LOOKUP}.onnx"
    return files


def profile_ranges(onnx_path: Path, manifest: dict, options: EngineOptions) -> dict[str, list[tuple]]:
    """input name -> [(min, opt, max)] per axis, from the graph's named (dynamic) axes.

    "batch" spans --min/--opt/--max-batch, "refs" 1..--max-refs, the lookup's spatial axes are the
    export's grid; fixed axes keep their size. An axis named otherwise cannot be given a range.
    """
    import onnx

    grid = int(manifest["config"]["base_size"])
    named = {"batch": (options.min_batch, options.opt_batch, options.max_batch),
             "refs": (1, options.max_refs, options.max_refs), **{a: (grid, grid, grid) for a in SPATIAL_AXES}}
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    ranges = {}
    for value in graph.input:
        if value.name in initializers:
            continue
        axes = []
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_value"):
                axes.append((dim.dim_value,) * 3)
            elif dim.dim_param in named:
                axes.append(named[dim.dim_param])
            else:
                raise CoordGANError(f"{onnx_path.name}: input {value.name} has an axis {dim.dim_param!r} that "
                                    f"TensorRT needs a range for; known axes: {', '.join(named)}.")
        ranges[value.name] = axes
    return ranges


def _save_timing_cache(cache, path) -> None:
    with atomic_write(path) as f:  # its refusals (a WriteError) name the path already
        f.write(memoryview(cache.serialize()))


def _build_one(trt, builder, logger, directory, manifest, name, file, options, timing_cache, strongly_typed_only,
               plugin):
    onnx_path = directory / file
    precision = options.precision
    onnx_bytes = None
    strongly_typed = manifest["fp16"]
    if precision != "fp32" and not manifest["fp16"] and strongly_typed_only:
        import onnx

        from export.precision import to_bfloat16, to_float16

        convert = to_float16 if precision == "fp16" else to_bfloat16
        onnx_bytes = convert(onnx.load(str(onnx_path))).SerializeToString()
        strongly_typed = True

    flags = 0
    if strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse(onnx_bytes, str(onnx_path)) if onnx_bytes is not None else parser.parse_from_file(str(onnx_path))
    if not ok:
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise CoordGANError(f"TensorRT cannot parse {onnx_path}: {errors[:300]}.")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gb * (1 << 30)))
    config.set_timing_cache(timing_cache, ignore_mismatch=False)
    build_flags = []
    if precision != "fp32" and not strongly_typed:
        flag = trt.BuilderFlag.FP16 if precision == "fp16" else trt.BuilderFlag.BF16
        config.set_flag(flag)
        build_flags.append(flag.name)
    profile = builder.create_optimization_profile()
    bindings = {"inputs": [], "outputs": []}
    batch_profile = {"min": options.min_batch, "opt": options.opt_batch, "max": options.max_batch}
    ranges = profile_ranges(onnx_path, manifest, options)
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shapes = {key: [axis[j] for axis in ranges[tensor.name]] for j, key in enumerate(("min", "opt", "max"))}
        profile.set_shape(tensor.name, shapes["min"], shapes["opt"], shapes["max"])
        bindings["inputs"].append(_binding(tensor, shapes))
    for i in range(network.num_outputs):
        bindings["outputs"].append(_binding(network.get_output(i), None))
    config.add_optimization_profile(profile)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise CoordGANError(f"TensorRT failed to build an engine from {onnx_path} (see its log above).")
    plan = directory / f"{name}.plan"
    with atomic_write(plan) as f:
        f.write(memoryview(serialized))
    sidecar = {
        "engine": plan.name,
        "onnx": {"file": file, "sha256": sha256_file(onnx_path)},
        "tensorrt_version": trt.__version__,
        "precision": "fp16" if manifest["fp16"] else precision,  # an fp16 ONNX builds as fp16
        "strongly_typed": bool(strongly_typed),
        "build_flags": build_flags,
        "workspace_gb": options.workspace_gb,
        "timing_cache": str(options.timing_cache) if options.timing_cache else None,
        "plugin": plugin,
        "profile": batch_profile,
        "bindings": bindings,
        "preset": manifest["preset"],
        "checkpoint_sha256": manifest["checkpoint"]["sha256"],
    }
    with atomic_write(directory / f"{name}.plan.json", "w") as f:
        json.dump(sidecar, f, indent=2)
    return plan


_TRT_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "UINT8": "uint8", "INT8": "int8",
               "INT32": "int32", "INT64": "int64", "BOOL": "bool"}


def _binding(tensor, profile_shapes) -> dict:
    shape = ["batch" if i == 0 else int(d) for i, d in enumerate(tensor.shape)]  # -1: a dynamic axis
    out = {"name": tensor.name, "shape": shape, "dtype": _TRT_DTYPES.get(tensor.dtype.name, tensor.dtype.name)}
    if profile_shapes:
        out["profile_shapes"] = profile_shapes
    return out
