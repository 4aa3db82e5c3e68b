"""`--device` of the PyTorch commands (train, eval-propagation): one reading, one message."""

from __future__ import annotations

import re

import torch

from coordgan.errors import CoordGANError


def torch_device(requested: str | None) -> str:
    """None picks cuda when PyTorch sees a GPU, else cpu; 'cpu' and 'cuda[:N]' are checked."""
    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if re.fullmatch(r"cuda(:\d+)?", requested):
        if not torch.cuda.is_available():
            raise CoordGANError(f"--device {requested} needs a CUDA GPU and PyTorch sees none.")
    elif requested != "cpu":
        raise CoordGANError(f"--device must be cpu or cuda[:N], got {requested!r}.")
    return requested
