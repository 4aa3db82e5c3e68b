"""CoordGAN in PyTorch: model, presets, checkpoints, training, evaluation, the torch reference of the
lookup; and the `coordgan` command line on top of everything (coordgan/cli/).

Importing the package is cheap and torch-free; the torch-backed names load on first use,
so `coordgan --help` never pays for PyTorch.
"""

from runtime.errors import CoordGANError

__all__ = ["CoordGANError", "load", "save", "build", "get_preset", "PRESETS"]

_LAZY = {
    "load": "coordgan.checkpoint",
    "save": "coordgan.checkpoint",
    "build": "coordgan.models",
    "get_preset": "coordgan.config",
    "PRESETS": "coordgan.config",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'coordgan' has no attribute {name!r}")
