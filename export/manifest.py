"""manifest.json of an export directory: what each model is, where it came from, what made it.

The same facts go into every ONNX file's metadata_props (JSON strings), so a model copied out of
its directory still says what it is.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from runtime.errors import CoordGANError

MANIFEST = "manifest.json"
FORMAT = "coordgan-deploy-onnx/1"
NOISE = "const, seed 0x5EED"
MODEL_FILES = {"encoder": "encoder.onnx", "generator": "generator.onnx"}


def tool_versions() -> dict:
    """The versions of what made the export. Modules report their own: onnxruntime comes from the
    onnxruntime or the onnxruntime-gpu distribution, under one module name."""
    import importlib
    from importlib import metadata

    versions = {}
    for module in ("torch", "onnx", "onnxscript", "onnxruntime"):
        try:
            versions[module] = importlib.import_module(module).__version__
        except (ImportError, AttributeError):
            versions[module] = None
    try:
        versions["coordgan-deploy"] = metadata.version("coordgan-deploy")
    except metadata.PackageNotFoundError:
        versions["coordgan-deploy"] = None
    return versions


def build_manifest(*, config, checkpoint_path: Path, checkpoint_sha256: str, checkpoint_source: str,
                   opset: int, fp16: bool, models: dict) -> dict:
    """`models`: name -> {"file", "inputs", "outputs", ...} (I/O specs as graph_tools.io_specs)."""
    return {
        "format": FORMAT,
        "preset": config.name,
        "config": dataclasses.asdict(config),
        "checkpoint": {"path": str(checkpoint_path), "sha256": checkpoint_sha256, "source": checkpoint_source},
        "opset": opset,
        "fp16": fp16,
        "io_dtype": "float32 (uint8 frames for a uint8 encoder)",
        "noise": NOISE,
        "tool_versions": tool_versions(),
        "models": models,
    }


def model_metadata(manifest: dict, name: str) -> dict:
    """The metadata_props of one model: the manifest's shared facts plus that model's entry."""
    shared = {k: v for k, v in manifest.items() if k != "models"}
    return {f"coordgan.{k}": v for k, v in shared.items()} | {"coordgan.model": {"name": name, **manifest["models"][name]}}


def read_manifest(directory: Path) -> dict:
    if not Path(directory).exists():
        raise CoordGANError(f"Export directory {directory} does not exist.")
    if not Path(directory).is_dir():
        raise CoordGANError(f"{directory} is a file, not an export directory (a folder with {MANIFEST}).")
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise CoordGANError(f"{directory} is not an export directory: it has no {MANIFEST}.")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CoordGANError(f"{path} is not valid JSON ({exc}).") from None
    if manifest.get("format") != FORMAT or not manifest.get("models"):
        raise CoordGANError(f"{path} is not a CoordGAN export manifest (format {manifest.get('format')!r}).")
    for name, entry in manifest["models"].items():
        if not (Path(directory) / entry["file"]).is_file():
            raise CoordGANError(f"The manifest in {directory} names {entry['file']} ({name}), which is missing.")
    return manifest
