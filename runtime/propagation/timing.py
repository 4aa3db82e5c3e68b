"""Where a propagation run spends its time, stage by stage (summary.json's "seconds")."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

STAGES = ("decode", "preprocess", "encoder", "lookup", "upsample_argmax", "write")


@dataclass
class StageTimer:
    """Seconds per stage:

    decode            frames out of the video or the folder
    preprocess        frames resized and scaled for the encoder; reference masks taken to the grid
    encoder           the exported encoder and coordinate warping network (one graph)
    lookup            each frame's pixels looked up in the reference memory
    upsample_argmax   the grid probabilities upsampled to the frame and argmaxed
    write             palette PNGs (probabilities, overlay frames) and the resume state
    """

    seconds: dict = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    def add(self, stage: str, since: float) -> float:
        """Book the time since `since` to `stage`; returns now, the start of the next stage."""
        now = time.perf_counter()
        self.seconds[stage] += now - since
        return now
