"""One step of mask propagation per frame: the algorithm, in one place (numpy, no file I/O).

    step = Propagator(LookupParams(memory=3, tau=0.01), labels=[0, 3, 7])
    step.annotate("00000", corr0, mask0)                 # an annotated frame joins the memory for good
    mask1, probs1 = step.propagate("00001", corr1, (H, W))  # any other frame: looked up in the memory

`runtime.propagation.sequence.propagate_sequence` (files, batches, resume), `coordgan bench
pipeline` and the Triton sequence model `coordgan_video` (one frame per request) all drive this
class, so all give the same masks.

Per frame, given its correspondence map (2, G, G):
- annotated: its mask (label values at frame size) becomes area-averaged label probabilities at the
  grid G, kept in the memory as a reference for the whole sequence; void pixels (255, the DAVIS
  "don't care" value) carry no label, so they are neither propagated nor predicted;
- any other: its pixels are looked up in the memory (runtime.lookup with the run's LookupParams:
  soft over every reference pixel at temperature tau, or only the top-k nearest), the grid
  probabilities are upsampled bilinearly to the frame size and the argmax is its mask; its grid
  probabilities then enter the window of the last M propagated frames.

Labels keep their values: the label values seen (0..254) map to compact channels in increasing
order. An annotation may bring new labels (a later annotated frame in a served video): the memory
then gains zero channels for them, exactly what it would hold had they been known from the start
(a lookup over references without a label gives that label probability 0).

The step saves and restores its whole state (memory, labels, the notes said so far), so a resumed
run continues exactly, and says again in its summary what an uninterrupted run would.
"""

from __future__ import annotations

import numpy as np

from runtime import lookup as lookup_ops
from runtime.errors import CoordGANError
from runtime.io.masks import VOID
from runtime.lookup.spec import LookupParams
from runtime.propagation.label_resize import labels_to_grid, upsample_argmax
from runtime.propagation.memory import Memory
from runtime.propagation.observer import Observer

# A trained encoder's maps spread over most of [-1, 1] (standard deviation ~0.5 per coordinate);
# an untrained one's collapse to ~0.002. Below this many tau, no lookup pixel can be skipped.
COLLAPSED_SPREAD = 5


class LabelChannels:
    """Label values (uint8, void excluded) <-> compact channels 0..C-1, in increasing value order;
    void pixels map to channel -1, which no channel matches."""

    def __init__(self, values=()):
        self._set(np.asarray(values, np.uint8))

    def _set(self, values: np.ndarray) -> None:
        self.values = np.setdiff1d(values, [VOID]).astype(np.uint8)  # channel -> label (sorted, unique)
        self.channel_of = np.full(256, -1, np.int64)  # label -> channel
        self.channel_of[self.values] = np.arange(len(self.values))

    def __len__(self) -> int:
        return len(self.values)

    def add(self, labels: np.ndarray) -> np.ndarray | None:
        """Take in the values of `labels`; None if all were known, else the old channels' new indices."""
        new = np.setdiff1d(np.unique(labels), [*self.values, VOID])
        if not new.size:
            return None
        old = self.values
        self._set(np.concatenate([old, new]))
        return self.channel_of[old]


class Propagator:
    """The memory of one sequence, and the step that gives each frame its mask."""

    def __init__(self, params: LookupParams = LookupParams(), *, impl: str = "auto", labels=(),
                 observer: Observer | None = None):
        """params: memory, tau, mode, k. impl: the runtime.lookup path (auto, dense, sparse, cuda,
        cuda-sparse; `runtime.lookup.impl_for_device` gives the one for a --device).
        labels: the label values known up front (all annotations' values, for a run that has them).
        observer: hears the step's notes and the seconds of its lookup and upsampling."""
        self.params, self.impl = params, lookup_ops.spec.check_impl(impl)
        lookup_ops.warm_up(self.impl, params.mode)  # once per process and mode (`propagate` starts it earlier)
        self.memory = Memory(params.memory)
        self.labels = LabelChannels(labels)
        self.observer = observer or Observer()
        self.notes: list[str] = []  # what a user should hear about this sequence (each said once)

    def annotate(self, name: str, corr: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """An annotated frame: mask (H, W) uint8 label values at frame size; returns its grid probabilities."""
        with self.observer.stage("preprocess"):
            self._check_spread(name, corr)
            widened = self.labels.add(mask)
            if widened is not None:
                self.memory.widen(widened, len(self.labels))
            probs = labels_to_grid(self.labels.channel_of[mask], len(self.labels), corr.shape[-1])
            self.memory.add_reference(name, corr, probs)
        return probs

    def add_reference(self, name: str, corr: np.ndarray, probs: np.ndarray) -> None:
        """A reference given as grid probabilities over the known labels (C, G, G) rather than a mask
        (a benchmark's workload): kept for the whole sequence, as an annotated frame is."""
        if probs.shape[0] != len(self.labels):
            raise CoordGANError(f"A reference's probabilities have {probs.shape[0]} label channels; this sequence "
                                f"knows {len(self.labels)} labels.")
        self.memory.add_reference(name, corr, probs)

    def propagate(self, name: str, corr: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Any other frame: (mask (H, W) uint8 label values at size = (H, W), grid probabilities (C, G, G))."""
        if not self.memory.refs:
            raise CoordGANError("No annotated frame yet: the first frame of a sequence needs a reference mask.")
        with self.observer.stage("lookup"):
            keys, values = self.memory.keys_values()
            m = keys.shape[1] * keys.shape[3] * keys.shape[4]
            probs, _ = lookup_ops.lookup(corr[None], keys, values, impl=self.impl, **self.params.args(m))
            probs = probs[0]
        with self.observer.stage("upsample_argmax"):
            mask = self.labels.values[upsample_argmax(probs, size)] if len(self.labels) else np.zeros(size, np.uint8)
            self.memory.push(name, corr, probs)
        return mask, probs

    def _check_spread(self, name: str, corr: np.ndarray) -> None:
        """A reference map whose coordinates spread over less than a few tau is collapsed: an untrained or
        broken encoder. Said once, because its masks cannot follow the frames (and a soft lookup over
        it is slow: no pixel can be skipped)."""
        tau = self.params.tau
        spread = float(np.mean([corr[0].std(), corr[1].std()]))
        if spread >= COLLAPSED_SPREAD * tau or any(n.startswith("collapsed") for n in self.notes):
            return
        cost = ("every reference pixel carries weight (the lookup compares them all, slowly) and "
                if self.params.mode == "soft" else "")
        self._say(f"collapsed maps: frame {name}'s correspondence map spreads {spread:.4f}, less than "
                  f"{COLLAPSED_SPREAD} x tau = {COLLAPSED_SPREAD * tau:g}, so {cost}the masks cannot follow the "
                  "frames; an untrained or broken encoder gives such maps.")

    def _say(self, text: str) -> None:
        self.notes.append(text)
        self.observer.note(text)

    # ---------------------------------------------------------------- resume state

    def save(self, path, *, next_frame: int, meta: dict) -> None:
        """The whole step (memory, label channels, notes) with the caller's `meta`, atomically."""
        self.memory.save(path, next_frame=next_frame,
                         meta={**meta, "labels": self.labels.values.tolist(), "notes": self.notes})

    @classmethod
    def restore(cls, path, params: LookupParams, *, impl: str = "auto", observer: Observer | None = None
                ) -> tuple["Propagator", int, dict]:
        """(the step as saved, the next frame to process, the caller's meta) from a state file."""
        memory, next_frame, meta = Memory.load(path, params.memory)
        step = cls(params, impl=impl, labels=meta.pop("labels", ()), observer=observer)
        step.memory, step.notes = memory, list(meta.pop("notes", []))
        return step, next_frame, meta
