"""A tiny-preset ONNX export for tests that serve or time it (the export's own tests verify it against PyTorch)."""

from __future__ import annotations

import torch

from coordgan.checkpoint import save
from coordgan.config import PRESETS
from coordgan.models import build
from export.onnx_export import ExportOptions, export_onnx


def export_tiny(root, **options):
    """Random tiny weights (the preset's warp init already makes the maps vary), saved as a
    checkpoint under root and exported to root/export; returns the export directory."""
    torch.manual_seed(0)
    nets = {k: v.eval() for k, v in build(PRESETS["tiny"], which=("g", "e")).items()}
    ckpt = save(root / "tiny.safetensors", PRESETS["tiny"], nets)
    return export_onnx(ckpt, root / "export", ExportOptions(verify=False, **options)).directory
