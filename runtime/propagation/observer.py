"""What a propagation run tells its caller as it goes: seconds per stage, notes, frames done."""

from __future__ import annotations

import time
from contextlib import contextmanager

STAGES = ("decode", "preprocess", "encoder", "lookup", "upsample_argmax", "write")


class Observer:
    """Hears a run: the step, the encoder and the sequence loop report here, nothing polls them.
    It keeps the seconds per stage (summary.json's "seconds"); subclass it to show progress.

    decode            frames out of the video or the folder
    preprocess        frames resized and scaled for the encoder; reference masks taken to the grid
    encoder           the exported encoder and coordinate warping network (one graph)
    lookup            each frame's pixels looked up in the reference memory
    upsample_argmax   the grid probabilities upsampled to the frame and argmaxed
    write             palette PNGs (probabilities, overlay frames) and the resume state
    """

    def __init__(self):
        self.seconds = dict.fromkeys(STAGES, 0.0)

    @contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def note(self, text: str) -> None:
        """Something a user should hear about the sequence (said once per sequence, by the step)."""

    def frame_done(self, done: int, total: int | None) -> None:
        """`done` frames have their masks (handed to the writer; on disk by the end of their batch)."""


class CallbackObserver(Observer):
    """An Observer that hands notes and frame counts to plain callables (either may be None)."""

    def __init__(self, on_frame=None, on_note=None):
        super().__init__()
        self._on_frame, self._on_note = on_frame, on_note

    def note(self, text: str) -> None:
        if self._on_note:
            self._on_note(text)

    def frame_done(self, done: int, total: int | None) -> None:
        if self._on_frame:
            self._on_frame(done, total)
