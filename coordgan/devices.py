"""`--device` of the PyTorch commands (train, eval-propagation): one reading, one message."""

from __future__ import annotations

import re

import torch

from coordgan.errors import CoordGANError


def torch_device(requested: str | None) -> str:
    """None picks cuda when PyTorch sees a GPU, else cpu; 'cpu' and 'cuda[:N]' are checked."""
    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    cuda = re.fullmatch(r"cuda(?::(\d+))?", requested)
    if cuda:
        if not torch.cuda.is_available():
            raise CoordGANError(f"--device {requested} needs a CUDA GPU and PyTorch sees none.")
        if cuda.group(1) is not None and int(cuda.group(1)) >= torch.cuda.device_count():
            raise CoordGANError(f"--device {requested}: PyTorch sees {torch.cuda.device_count()} GPU(s), "
                                f"numbered from 0.")
    elif requested != "cpu":
        raise CoordGANError(f"--device must be cpu or cuda[:N], got {requested!r}.")
    return requested
