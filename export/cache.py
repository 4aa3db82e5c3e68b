"""The one ONNX export cache: a checkpoint's models exported (and verified) once, reused by every command.

    <cache>/onnx/<sha16>[-fp16]/<model>/   an export directory holding <model>.onnx and manifest.json
    <cache>/presets/<preset>-seed<N>.safetensors   random weights, for benchmarks at published scale

<cache> is $COORDGAN_CACHE (else $XDG_CACHE_HOME/coordgan, else ~/.cache/coordgan:
runtime.fileio.cache_dir) unless a caller names another. Exports are keyed by the checkpoint's SHA-256, so a changed file is exported anew
and the same weights under another name are not. `coordgan propagate --model CKPT`, the demo and
`coordgan bench` all export through here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from runtime.errors import CoordGANError
from runtime.fileio import cache_dir, sha256_file

VERIFY_BATCHES = (1, 2)  # a cached export is checked against PyTorch at a batch of 1 and a batch of more


def export_dir(ckpt, model: str, *, fp16: bool = False, cache: Path | None = None,
               progress: Callable[[str], None] | None = None) -> Path:
    """The export directory of one model ("encoder" or "generator") of a checkpoint (a file, or a
    loaded coordgan.checkpoint.Checkpoint), exported on first use."""
    from export.manifest import MODEL_FILES

    loaded = None if isinstance(ckpt, (str, Path)) else ckpt
    path = Path(ckpt) if loaded is None else loaded.path
    if loaded is None and not path.is_file():
        raise CoordGANError(f"Checkpoint {path} does not exist or is not a file.")
    root = Path(cache) if cache is not None else cache_dir()
    sha = loaded.sha256 if loaded is not None else sha256_file(path)
    target = root / "onnx" / (sha[:16] + ("-fp16" if fp16 else "")) / model
    if (target / MODEL_FILES[model]).is_file():
        return target
    try:
        from coordgan.checkpoint import load
        from export.onnx_export import ExportOptions, export_onnx
    except ImportError as exc:
        raise CoordGANError(f"Exporting {path} needs PyTorch and onnx ({exc.name} is missing); export it with "
                            "`coordgan export onnx` elsewhere and pass the ONNX file.") from None
    loaded = loaded or load(path)  # a file that is no checkpoint is refused before anything is announced
    if progress:
        progress(f"exporting the {model} of {path} to {target} (once)")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        export_onnx(loaded, target, ExportOptions(fp16=fp16, only=model, verify_batches=VERIFY_BATCHES))
    except CoordGANError:
        if not (target / MODEL_FILES[model]).is_file():  # another process (another shard) may have won the race
            raise
    return target


def encoder_onnx(ckpt, *, cache: Path | None = None, progress: Callable[[str], None] | None = None) -> Path:
    """encoder.onnx of a checkpoint, from the cache (exported on first use)."""
    from export.manifest import MODEL_FILES

    return export_dir(ckpt, "encoder", cache=cache, progress=progress) / MODEL_FILES["encoder"]


class ModelSource:
    """Where benchmarked weights come from: a checkpoint, or a preset with random weights (seeded,
    saved once in the cache, so published-scale timings need no trained weights).

    `as_preset` names the preset of a checkpoint (checked against its shapes): an authors' .pt carries no
    config, and celeba-128, cars-128 and cats-128 have the same shapes, so the first of them would be taken."""

    def __init__(self, ckpt=None, preset: str | None = None, seed: int = 0, cache: Path | None = None,
                 progress: Callable[[str], None] | None = None, as_preset: str | None = None):
        from coordgan.checkpoint import check_one_source
        from coordgan.config import get_preset

        check_one_source(ckpt, preset)
        if as_preset is not None:
            if ckpt is None:
                raise CoordGANError(f"--as-preset names the preset of a checkpoint; --preset {preset} has random "
                                    "weights of its own preset, so give one of them.")
            get_preset(as_preset)  # an unknown name fails now
        self.as_preset = as_preset
        self.cache = Path(cache) if cache is not None else cache_dir()
        self.seed = seed
        self.progress = progress or (lambda message: None)
        self._ck = None
        self.preset = preset
        if ckpt is not None:
            self.ckpt_path = Path(ckpt)
            if not self.ckpt_path.is_file():
                raise CoordGANError(f"Checkpoint {ckpt} does not exist or is not a file.")
        else:
            self.config = get_preset(preset)
            self.ckpt_path = None

    def describe(self) -> str:
        if self.preset is not None:
            return f"preset {self.preset}, random weights (seed {self.seed})"
        return f"checkpoint {self.ckpt_path}" + (f" as preset {self.as_preset}" if self.as_preset else "")

    def _preset_checkpoint(self) -> Path:
        path = self.cache / "presets" / f"{self.preset}-seed{self.seed}.safetensors"
        if not path.is_file():
            from coordgan.checkpoint import random_networks, save

            self.progress(f"making {self.preset} with random weights (seed {self.seed})")
            path.parent.mkdir(parents=True, exist_ok=True)
            save(path, *random_networks(self.preset, self.seed))
        return path

    def checkpoint(self):
        """The loaded torch Checkpoint (cached)."""
        if self._ck is None:
            from coordgan.checkpoint import load

            self._ck = load(self.ckpt_path, preset=self.as_preset) if self.ckpt_path else \
                load(self._preset_checkpoint())
        return self._ck

    def onnx_dir(self, model: str, fp16: bool = False) -> Path:
        """Export directory with `<model>.onnx` for this source, exported on first use."""
        ck = self.checkpoint()
        if model == "encoder" and "e" not in ck.networks:
            raise CoordGANError(f"Checkpoint {ck.path} has no encoder, so encoder.onnx cannot be exported.")
        return export_dir(ck, model, fp16=fp16, cache=self.cache, progress=self.progress)
