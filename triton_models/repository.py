"""`coordgan triton build`: an export directory -> a Triton model repository, published atomically.

    REPO/coordgan_encoder/      config.pbtxt, 1/model.onnx | 1/model.plan | 1/model.py + 1/model.onnx
    REPO/coordgan_generator/    the same three variants
    REPO/coordgan_corr_lookup/  1/model.plan (TensorRT, the CorrLookup plugin inside) | 1/model.py
    REPO/coordgan_frame_labels/ an ensemble: frame + reference memory -> encoder -> lookup -> labels
    REPO/coordgan_video/        the stateful video model (triton_models.models.video), 1/model.py
    REPO/repository.json        what was built from what (Triton ignores files at the top)

Every input is checked before anything is written; the repository is assembled in a temp
directory beside REPO and renamed into place, so Triton never polls a half-written one.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from export.manifest import read_manifest
from export.staging import check_target, staged_directory
from runtime.errors import CoordGANError, first_line
from runtime.lookup.spec import LookupParams
from triton_models import pbtxt

BACKENDS = ("onnxruntime", "openvino", "tensorrt", "python")
ENCODER, GENERATOR, LOOKUP = "coordgan_encoder", "coordgan_generator", "coordgan_corr_lookup"
FRAME_LABELS, VIDEO = "coordgan_frame_labels", "coordgan_video"
LOOKUP_ONNX, LOOKUP_PLAN = "corr_lookup.onnx", "corr_lookup.plan"
DEFAULT_PREFERRED = (4, 8)
# Triton's OpenVINO backend: one stream that all its threads serve (the latency mode its README recommends
# for few clients; more instances for more). It has no fp32 switch: OpenVINO runs f32 on CPUs without
# native bf16, bf16 on those with it (AMX, AVX512_BF16); our own OpenVINO backend asks for f32.
OPENVINO_PARAMETERS = {"NUM_STREAMS": "1", "PERFORMANCE_HINT": "LATENCY"}
REPOSITORY_JSON = "repository.json"
# the lookup's I/O when no lookup ONNX fixes the class count and dtype (as export/lookup_onnx.py names them)
LOOKUP_IO = {
    "inputs": [{"name": "query", "shape": ["batch", 2, "hq", "wq"], "dtype": "float32"},
               {"name": "ref_maps", "shape": ["batch", "refs", 2, "hk", "wk"], "dtype": "float32"},
               {"name": "ref_probs", "shape": ["batch", "refs", "classes", "hk", "wk"], "dtype": "float32"}],
    "outputs": [{"name": "probs", "shape": ["batch", "classes", "hq", "wq"], "dtype": "float32"},
                {"name": "labels", "shape": ["batch", "hq", "wq"], "dtype": "int32"}],
}


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    backend: str = "python"
    max_batch: int = 8
    dynamic_batching: bool = True
    preferred_batch: tuple[int, ...] | None = None  # None: 4,8 capped at max_batch
    queue_delay_us: int = 2000
    instances: int = 1
    kind: str | None = None  # cpu | gpu | auto; None: cpu for python and openvino, gpu for tensorrt, auto for onnxruntime
    video: bool = True
    video_idle_s: float = 60.0
    memory: int = 3
    tau: float = 0.01
    topk: int | None = None
    overwrite: bool = False

    def validate(self) -> None:
        if self.backend not in BACKENDS:
            raise CoordGANError(f"--backend must be one of {', '.join(BACKENDS)}, not {self.backend!r}.")
        if self.max_batch < 1:
            raise CoordGANError(f"--max-batch must be at least 1, not {self.max_batch}.")
        if self.preferred_batch is not None and not all(1 <= b <= self.max_batch for b in self.preferred_batch):
            raise CoordGANError(f"--preferred-batch sizes must be between 1 and --max-batch ({self.max_batch}), "
                                f"not {','.join(map(str, self.preferred_batch))}.")
        if self.queue_delay_us < 0:
            raise CoordGANError(f"--queue-delay-us must not be negative, not {self.queue_delay_us}.")
        if self.instances < 1:
            raise CoordGANError(f"--instances must be at least 1, not {self.instances}.")
        if self.kind is not None and self.kind not in pbtxt.KINDS:
            raise CoordGANError(f"--kind must be one of {', '.join(pbtxt.KINDS)}, not {self.kind!r}.")
        if self.backend == "tensorrt" and self.instance_kind != "gpu":
            raise CoordGANError("TensorRT plans run on a GPU only: use --kind gpu with --backend tensorrt.")
        if self.backend == "openvino" and self.instance_kind != "cpu":
            raise CoordGANError("Triton's OpenVINO backend runs on the CPU only: use --kind cpu with --backend openvino.")
        if not self.video_idle_s > 0:
            raise CoordGANError(f"--video-idle-s must be positive, not {self.video_idle_s}.")
        LookupParams.with_topk(memory=self.memory, tau=self.tau, topk=self.topk)  # the video model's lookup

    @property
    def instance_kind(self) -> str:
        return self.kind or {"python": "cpu", "openvino": "cpu", "tensorrt": "gpu"}.get(self.backend, "auto")

    @property
    def device(self) -> str:
        """Where python-backend models run their work (ONNX Runtime, the lookup)."""
        return {"cpu": "cpu", "gpu": "cuda", "auto": "auto"}[self.instance_kind]

    def batching(self):
        if not self.dynamic_batching:
            return None
        preferred = self.preferred_batch or tuple(b for b in DEFAULT_PREFERRED if b <= self.max_batch) \
            or (self.max_batch,)
        return preferred, self.queue_delay_us


@dataclasses.dataclass
class ModelPlan:
    """One model folder: its config text, files copied in (folder-relative path -> source), files written."""

    name: str
    variant: str  # onnxruntime | openvino | tensorrt | python | ensemble
    config: str
    copies: dict[str, Path] = dataclasses.field(default_factory=dict)
    texts: dict[str, str] = dataclasses.field(default_factory=dict)

    def write(self, repo: Path) -> None:
        folder = repo / self.name
        (folder / "1").mkdir(parents=True)
        (folder / "config.pbtxt").write_text(self.config)
        for rel, text in self.texts.items():
            (folder / rel).write_text(text)
        for rel, source in self.copies.items():
            shutil.copyfile(source, folder / rel)


@dataclasses.dataclass
class BuildResult:
    repo: Path
    models: list[ModelPlan]
    notes: list[str]


def build_repository(models_dir, out, options: BuildOptions = BuildOptions()) -> BuildResult:
    """Check everything, then write the repository for `options.backend` to `out` atomically."""
    options.validate()
    models_dir, out = Path(models_dir), Path(out).absolute()
    check_target(out, options.overwrite)  # before reading models: a refusal should be quick
    manifest = read_manifest(models_dir)
    plans, notes = plan_repository(models_dir, manifest, options)
    with staged_directory(out, options.overwrite) as staging:
        try:
            for plan in plans:
                plan.write(staging)
            (staging / REPOSITORY_JSON).write_text(json.dumps(_summary(models_dir, manifest, options, plans, notes),
                                                              indent=2) + "\n")
        except OSError as exc:
            raise CoordGANError(f"Cannot write the repository under {out.parent}: {exc.strerror or exc}.") from None
    return BuildResult(out, plans, notes)


def plan_repository(models_dir: Path, manifest: dict, options: BuildOptions) -> tuple[list[ModelPlan], list[str]]:
    notes: list[str] = []
    exported = manifest["models"]
    plans = [_onnx_model(name, key, models_dir, manifest, options)
             for name, key in ((ENCODER, "encoder"), (GENERATOR, "generator")) if key in exported]
    for key, models in (("encoder", f"{ENCODER}, {FRAME_LABELS} or {VIDEO}"), ("generator", GENERATOR)):
        if key not in exported:
            notes.append(f"{models_dir} has no {key} model, so the repository has no {models}.")
    lookup, lookup_io = _lookup_model(models_dir, options, notes)
    plans.append(lookup)
    if "encoder" in exported:
        corr = next(o for o in exported["encoder"]["outputs"] if o["name"] == "corr_map")
        query = next(i for i in lookup_io["inputs"] if i["name"] == "query")
        if corr["dtype"] == query["dtype"]:
            plans.append(_frame_labels(exported["encoder"], lookup_io, options))
        else:
            notes.append(f"No {FRAME_LABELS}: the encoder gives {corr['dtype']} maps, "
                         f"the lookup takes {query['dtype']}.")
        video = _video_model(options)
        if video:
            plans.append(video)
    return plans, notes


def _shim(name: str, module: str) -> str:
    return (f"# {name}: its code is {module} (pip install 'coordgan-deploy[runtime]' where Triton runs).\n"
            f"from {module} import TritonPythonModel  # noqa: F401\n")


def _comment(what: str) -> str:
    return f"{what}\nWritten by `coordgan triton build`; see triton_models/README.md."


def _onnx_model(name: str, key: str, models_dir: Path, manifest: dict, options: BuildOptions) -> ModelPlan:
    """coordgan_encoder / coordgan_generator: platform onnxruntime_onnx or tensorrt_plan, backend openvino (the
    same model.onnx, which Triton's OpenVINO backend reads as it is), or python."""
    entry = manifest["models"][key]
    common = dict(inputs=entry["inputs"], outputs=entry["outputs"], max_batch=options.max_batch,
                  dynamic_batching=options.batching(), instances=(options.instance_kind, options.instances))
    what = f"CoordGAN {key} ({manifest['preset']}, checkpoint sha256 {manifest['checkpoint']['sha256'][:12]})"
    onnx_path = models_dir / entry["file"]
    if options.backend != "tensorrt":  # the repository serves this file: refuse a damaged or foreign one now
        from export.graph_tools import io_specs

        expected, found = _names(entry), _names(io_specs(_read_onnx(onnx_path)))
        if found != expected:
            raise CoordGANError(f"{onnx_path} does not match its manifest: it takes {found['inputs']} and gives "
                                f"{found['outputs']}, the manifest says {expected['inputs']} and "
                                f"{expected['outputs']}; export it again.")
    if options.backend == "onnxruntime":
        config = pbtxt.model_config(name, platform="onnxruntime_onnx", comment=_comment(what), **common)
        return ModelPlan(name, "onnxruntime", config, copies={"1/model.onnx": onnx_path})
    if options.backend == "openvino":
        config = pbtxt.model_config(name, backend="openvino", comment=_comment(what), parameters=OPENVINO_PARAMETERS,
                                    extra='default_model_filename: "model.onnx"', **common)
        return ModelPlan(name, "openvino", config, copies={"1/model.onnx": onnx_path})
    if options.backend == "tensorrt":
        plan = models_dir / f"{key}.plan"
        if not plan.is_file():
            raise CoordGANError(f"--backend tensorrt needs {plan.name} in {models_dir}; build it with "
                                f"`coordgan export trt {models_dir}`.")
        _check_plan_batch(plan, options.max_batch)
        config = pbtxt.model_config(name, platform="tensorrt_plan", comment=_comment(what), **common)
        return ModelPlan(name, "tensorrt", config, copies={"1/model.plan": plan})
    config = pbtxt.model_config(name, backend="python", comment=_comment(what),
                                parameters={"onnx_file": "model.onnx", "device": options.device}, **common)
    return ModelPlan(name, "python", config, copies={"1/model.onnx": onnx_path},
                     texts={"1/model.py": _shim(name, f"triton_models.models.{key}")})


def _check_plan_batch(plan: Path, max_batch: int) -> None:
    """A plan's optimisation profile (from its .plan.json sidecar, where there is one) must take max_batch."""
    sidecar = plan.with_name(plan.name + ".json")
    if not sidecar.is_file():
        return
    try:
        top = int(json.loads(sidecar.read_text())["profile"]["max"])
    except (ValueError, KeyError, TypeError):
        raise CoordGANError(f"{sidecar} is not a plan sidecar of `coordgan export trt`.") from None
    if top < max_batch:
        raise CoordGANError(f"{plan.name} takes batches up to {top}, below --max-batch {max_batch}; lower "
                            f"--max-batch or rebuild it with `coordgan export trt --max-batch {max_batch}`.")


def _read_onnx(path: Path):
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise CoordGANError(f"{path} is not a readable ONNX model ({first_line(exc)}).") from None


def _names(io: dict) -> dict:
    """Input and output names of a manifest entry or io_specs()."""
    return {k: [t["name"] for t in io[k]] for k in ("inputs", "outputs")}


def _lookup_attributes(path: Path) -> tuple[dict, dict]:
    """I/O specs and (tau, mode, k) of a lookup ONNX from `coordgan export lookup`."""
    from export.graph_tools import io_specs

    model = _read_onnx(path)
    props = {p.key: p.value for p in model.metadata_props}
    if props.get("coordgan.op") != "coordgan::CorrLookup":
        raise CoordGANError(f"{path} is not a lookup model of `coordgan export lookup` (no coordgan::CorrLookup).")
    attrs = {"tau": float(props["coordgan.tau"]), "mode": props["coordgan.mode"], "k": int(props["coordgan.k"])}
    return io_specs(model), attrs


def _lookup_model(models_dir: Path, options: BuildOptions, notes: list[str]) -> tuple[ModelPlan, dict]:
    """coordgan_corr_lookup: the TensorRT plan with the CorrLookup plugin, or python over runtime.lookup."""
    onnx_path, plan = models_dir / LOOKUP_ONNX, models_dir / LOOKUP_PLAN
    if onnx_path.is_file():  # its attributes and class count define the lookup, whichever variant runs it
        io, attrs = _lookup_attributes(onnx_path)
    else:
        io = LOOKUP_IO
        attrs = {"tau": options.tau, "mode": "topk" if options.topk else "soft", "k": options.topk or 0}
    common = dict(inputs=io["inputs"], outputs=io["outputs"], max_batch=options.max_batch,
                  dynamic_batching=options.batching(), instances=(options.instance_kind, options.instances))
    what = f"Correspondence lookup: tau {attrs['tau']}, mode {attrs['mode']}" + (
        f", k {attrs['k']}" if attrs["mode"] == "topk" else "")
    if options.backend == "tensorrt" and plan.is_file():
        if not onnx_path.is_file():
            raise CoordGANError(f"{plan} needs the {LOOKUP_ONNX} it was built from beside it (its I/O and attributes).")
        config = pbtxt.model_config(LOOKUP, platform="tensorrt_plan", comment=_comment(what), **common)
        return ModelPlan(LOOKUP, "tensorrt", config, copies={"1/model.plan": plan}), io
    if options.backend in ("onnxruntime", "openvino"):
        runtime_name = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}[options.backend]
        notes.append(f"{LOOKUP} runs on the python backend: {runtime_name} has no kernel for coordgan::CorrLookup.")
    elif options.backend == "tensorrt":
        notes.append(f"{LOOKUP} runs on the python backend: {models_dir} has no {LOOKUP_PLAN}.")
    parameters = {"tau": repr(float(attrs["tau"])), "mode": attrs["mode"], "k": str(attrs["k"]),
                  "device": options.device}
    config = pbtxt.model_config(LOOKUP, backend="python", comment=_comment(what), parameters=parameters, **common)
    return ModelPlan(LOOKUP, "python", config,
                     texts={"1/model.py": _shim(LOOKUP, "triton_models.models.corr_lookup")}), io


def _frame_labels(encoder_io: dict, lookup_io: dict, options: BuildOptions) -> ModelPlan:
    """Ensemble: the encoder's input + ref_maps, ref_probs -> encoder -> corr_lookup -> probs, labels."""
    frame = encoder_io["inputs"][0]
    memory = [s for s in lookup_io["inputs"] if s["name"] != "query"]
    steps = [
        pbtxt.ensemble_step(ENCODER, {frame["name"]: frame["name"]}, {"corr_map": "corr_map"}),
        pbtxt.ensemble_step(LOOKUP, {"query": "corr_map", **{s["name"]: s["name"] for s in memory}},
                            {o["name"]: o["name"] for o in lookup_io["outputs"]}),
    ]
    config = pbtxt.model_config(
        FRAME_LABELS, platform="ensemble", inputs=[frame, *memory], outputs=lookup_io["outputs"],
        max_batch=options.max_batch, extra=pbtxt.ensemble_scheduling(steps),
        comment=_comment(f"Frame + reference memory -> {ENCODER} -> {LOOKUP} -> probs, labels."))
    return ModelPlan(FRAME_LABELS, "ensemble", config)


def _video_model(options: BuildOptions) -> ModelPlan | None:
    if not options.video:
        return None
    from triton_models.models import video

    config = video.config(name=VIDEO, encoder_model=ENCODER, memory=options.memory, tau=options.tau,
                          topk=options.topk, idle_us=int(round(options.video_idle_s * 1e6)),
                          instances=options.instances)
    return ModelPlan(VIDEO, "python", config, texts={"1/model.py": _shim(VIDEO, "triton_models.models.video")})


def _summary(models_dir: Path, manifest: dict, options: BuildOptions, plans: list[ModelPlan], notes: list[str]):
    return {
        "format": "coordgan-triton-repository/1",
        "source": str(models_dir.absolute()),
        "preset": manifest["preset"],
        "checkpoint_sha256": manifest["checkpoint"]["sha256"],
        "options": dataclasses.asdict(options),
        "models": {p.name: p.variant for p in plans},
        "notes": notes,
    }
