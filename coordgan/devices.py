"""`--device` of the PyTorch commands (train, eval-propagation): one reading, one message."""

from __future__ import annotations

import re

import torch

from runtime.errors import CoordGANError


def torch_device(requested: str | None) -> str:
    """None picks cuda when PyTorch sees a GPU, else cpu; 'cpu' and 'cuda[:N]' are checked."""
    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    cuda = re.fullmatch(r"cuda(?::(0|[1-9][0-9]*))?", requested, re.ASCII)  # what torch.device accepts
    if cuda:
        if not torch.cuda.is_available():
            raise CoordGANError(f"--device {requested} needs a CUDA GPU and PyTorch sees none.")
        count = torch.cuda.device_count()
        if cuda.group(1) is not None and int(cuda.group(1)) >= count:
            raise CoordGANError(f"--device {requested} is beyond the {count} GPU(s) PyTorch sees; "
                                f"use cuda:0 to cuda:{count - 1}.")
    elif requested != "cpu":
        raise CoordGANError(f"--device must be cpu or cuda[:N], got {requested!r}.")
    return requested
