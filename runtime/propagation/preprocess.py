"""Frames -> model input, the same way training prepares images.

Training (coordgan.train.data) resizes with Pillow's Lanczos filter and scales to [-1, 1]; frames
here go through the same filter, on the whole frame (no crop: every pixel needs a label), so a
non-square frame is squeezed to the square canonical grid and its labels stretched back.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from runtime.errors import CoordGANError

RESAMPLE = Image.LANCZOS


def check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise CoordGANError(f"Frames must be uint8 RGB arrays of shape (N, H, W, 3), got {frames.dtype} "
                            f"{list(frames.shape)}.")
    return frames


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, size, size, 3) uint8 with the training resampling filter."""
    frames = check_frames(frames)
    if frames.shape[1:3] == (size, size):
        return frames
    return np.stack([np.asarray(Image.fromarray(f).resize((size, size), RESAMPLE)) for f in frames])


def to_unit_range(frames: np.ndarray) -> np.ndarray:
    """(N, S, S, 3) uint8 -> (N, 3, S, S) float32 in [-1, 1]."""
    return np.ascontiguousarray(frames.transpose(0, 3, 1, 2), dtype=np.float32) * np.float32(2 / 255) - 1
