"""One step of mask propagation per frame: the algorithm, in one place (numpy, no file I/O).

    step = Propagator(model.lookup, memory=3, tau=0.01, labels=[0, 3, 7])
    step.annotate("00000", corr0, mask0)                 # an annotated frame joins the memory for good
    mask1, probs1 = step.propagate("00001", corr1, (H, W))  # any other frame: looked up in the memory

`runtime.propagation.sequence.propagate_sequence` (files, batches, resume) and the Triton sequence model
`coordgan_video` (one frame per request) both drive this class, so both give the same masks.

Per frame (docs/DESIGN.md, "One frame of mask propagation"), given its correspondence map (2, G, G):
- annotated: its mask (label values at frame size) becomes area-averaged label probabilities at the
  grid G, kept in the memory as a reference for the whole sequence;
- any other: its pixels are looked up in the memory (soft lookup, temperature tau, optionally only
  the top-k neighbours), the grid probabilities are upsampled bilinearly to the frame size and the
  argmax is its mask; its grid probabilities then enter the window of the last M propagated frames.

Labels keep their values: the label values seen (any of 0..255) map to compact channels in
increasing order. An annotation may bring new labels (a later annotated frame in a served video):
the memory then gains zero channels for them, exactly what it would hold had they been known from
the start (a lookup over references without a label gives that label probability 0).
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from runtime.errors import CoordGANError
from runtime.propagation.label_resize import labels_to_grid, upsample_argmax
from runtime.propagation.memory import Memory
from runtime.propagation.timing import StageTimer

# A trained encoder's maps spread over most of [-1, 1] (standard deviation ~0.5 per coordinate);
# an untrained one's collapse to ~0.002. Below this many tau, no lookup pixel can be skipped.
COLLAPSED_SPREAD = 5


class LabelChannels:
    """Label values (uint8) <-> compact channels 0..C-1, in increasing value order."""

    def __init__(self, values=()):
        self._set(np.asarray(values, np.uint8))

    def _set(self, values: np.ndarray) -> None:
        self.values = np.unique(values)  # channel -> label
        self.channel_of = np.zeros(256, np.int64)  # label -> channel
        self.channel_of[self.values] = np.arange(len(self.values))

    def __len__(self) -> int:
        return len(self.values)

    def add(self, labels: np.ndarray) -> np.ndarray | None:
        """Take in the values of `labels`; None if all were known, else the old channels' new indices."""
        new = np.setdiff1d(np.unique(labels), self.values)
        if not new.size:
            return None
        old = self.values
        self._set(np.concatenate([old, new]))
        return self.channel_of[old]


class Propagator:
    """The memory of one sequence, and the step that gives each frame its mask."""

    def __init__(self, lookup: Callable, *, memory: int | Memory = 3, tau: float = 0.01, topk: int | None = None,
                 labels=()):
        """lookup: `CorrespondenceModel.lookup` (query, ref_maps, ref_probs, tau=, mode=, k=) -> (probs, labels).
        memory: M, the number of recent propagated frames kept, or a Memory to continue (a resumed run).
        labels: the label values known up front (all annotations' values, for a run that has them)."""
        self.lookup = lookup
        self.memory = memory if isinstance(memory, Memory) else Memory(memory)
        self.tau, self.topk = tau, topk
        self.labels = LabelChannels(labels)
        self.notes: list[str] = []  # what a user should hear about this sequence (said once)

    def annotate(self, name: str, corr: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """An annotated frame: mask (H, W) uint8 label values at frame size; returns its grid probabilities."""
        self._check_spread(name, corr)
        widened = self.labels.add(mask)
        if widened is not None:
            self.memory.widen(widened, len(self.labels))
        probs = labels_to_grid(self.labels.channel_of[mask], len(self.labels), corr.shape[-1])
        self.memory.add_reference(name, corr, probs)
        return probs

    def _check_spread(self, name: str, corr: np.ndarray) -> None:
        """A reference map whose coordinates spread over less than a few tau is collapsed: an untrained or
        broken encoder. Said once, because the run will be slow and its masks cannot follow the frames."""
        spread = float(np.mean([corr[0].std(), corr[1].std()]))
        if spread < COLLAPSED_SPREAD * self.tau and not any(n.startswith("collapsed") for n in self.notes):
            self.notes.append(f"collapsed maps: frame {name}'s correspondence map spreads {spread:.4f}, less than "
                              f"{COLLAPSED_SPREAD} x tau = {COLLAPSED_SPREAD * self.tau:g}, so every reference pixel "
                              "carries weight (the lookup compares them all, slowly) and the masks cannot follow "
                              "the frames; an untrained or broken encoder gives such maps.")

    def propagate(self, name: str, corr: np.ndarray, size: tuple[int, int], timer: StageTimer | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
        """Any other frame: (mask (H, W) uint8 label values at size = (H, W), grid probabilities (C, G, G));
        `timer` books the lookup and the upsampling apart."""
        if not self.memory.refs:
            raise CoordGANError("No annotated frame yet: the first frame of a sequence needs a reference mask.")
        timer = timer or StageTimer()
        tick = time.perf_counter()
        keys, values = self.memory.keys_values()
        k = None if self.topk is None else min(self.topk, keys.shape[1] * keys.shape[3] * keys.shape[4])
        probs, _ = self.lookup(corr[None], keys, values, tau=self.tau, mode="soft" if k is None else "topk", k=k)
        probs = probs[0]
        tick = timer.add("lookup", tick)
        mask = self.labels.values[upsample_argmax(probs, size)]
        self.memory.push(name, corr, probs)
        timer.add("upsample_argmax", tick)
        return mask, probs
