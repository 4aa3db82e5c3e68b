"""Where the benchmarked weights come from, and the ONNX export cache for the runtime backends.

`--ckpt CKPT`: that checkpoint; exports are cached under its SHA-256. `--preset P`: random weights
(seed), saved once as a checkpoint in the cache, so published-scale timings need no trained
weights; exports are cached under preset + seed. Each model is exported into its own directory
(`<cache>/<key>[-fp16]/<model>/`), with the export's own verification at batch 1.
"""

from __future__ import annotations

import os
from pathlib import Path

from runtime.errors import CoordGANError


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "coordgan" / "bench"


class ModelSource:
    def __init__(self, ckpt=None, preset: str | None = None, seed: int = 0, cache_dir=None, progress=None):
        if (ckpt is None) == (preset is None):
            raise CoordGANError("Give exactly one of --ckpt CKPT and --preset NAME (random weights).")
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.seed = seed
        self.progress = progress or (lambda message: None)
        self._ck = None
        if ckpt is not None:
            from runtime.fileio import sha256_file

            self.ckpt_path = Path(ckpt)
            if not self.ckpt_path.is_file():
                raise CoordGANError(f"Checkpoint {ckpt} does not exist or is not a file.")
            self.key = "ckpt-" + sha256_file(self.ckpt_path)[:16]
            self.preset = None
        else:
            from coordgan.config import get_preset

            self.config = get_preset(preset)
            self.preset = preset
            self.key = f"preset-{preset}-seed{seed}"
            self.ckpt_path = None

    def describe(self) -> str:
        return f"checkpoint {self.ckpt_path}" if self.preset is None else \
            f"preset {self.preset}, random weights (seed {self.seed})"

    def _preset_checkpoint(self) -> Path:
        path = self.cache_dir / self.key / "random.safetensors"
        if not path.is_file():
            import torch

            from coordgan.checkpoint import save
            from coordgan.models import build

            self.progress(f"making {self.preset} with random weights (seed {self.seed})")
            torch.manual_seed(self.seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            save(path, self.config, build(self.config, which=("g", "e")))
        return path

    def checkpoint(self):
        """The loaded torch Checkpoint (cached)."""
        if self._ck is None:
            from coordgan.checkpoint import load

            path = self.ckpt_path or self._preset_checkpoint()
            self._ck = load(path)
        return self._ck

    def onnx_dir(self, model: str, fp16: bool = False) -> Path:
        """Directory with `<model>.onnx` for this source, exported on first use."""
        from export.manifest import MODEL_FILES

        directory = self.cache_dir / (self.key + ("-fp16" if fp16 else "")) / model
        if (directory / MODEL_FILES[model]).is_file():
            return directory
        from export.onnx_export import ExportOptions, export_onnx

        ck = self.checkpoint()
        if model == "encoder" and "e" not in ck.networks:
            raise CoordGANError(f"Checkpoint {ck.path} has no encoder, so encoder.onnx cannot be exported.")
        self.progress(f"exporting {model} to ONNX ({directory})")
        directory.parent.mkdir(parents=True, exist_ok=True)
        export_onnx(ck.path, directory, ExportOptions(fp16=fp16, only=model, overwrite=True, verify_batches=(1,)))
        return directory
