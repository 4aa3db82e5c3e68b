"""Where inference runs: the device values every runtime command and backend takes."""

from __future__ import annotations

from runtime.errors import CoordGANError

DEVICES = ("auto", "cpu", "cuda")  # auto: a GPU where one answers, else the CPU


def check_device(device: str, name: str = "--device") -> str:
    if device not in DEVICES:
        raise CoordGANError(f"{name} must be auto, cpu or cuda, not {device!r}.")
    return device
