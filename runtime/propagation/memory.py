"""The reference memory of mask propagation, and the resume state that saves it.

The memory is what each new frame looks labels up in: the annotated frames (kept for the whole
sequence) plus the last M propagated frames (a sliding window), each as a correspondence map
(2, G, G) and label probabilities (C, G, G) at the model's grid G. Propagated frames keep their
soft probabilities, not hard labels, so uncertainty carries over instead of hardening.

A resumed run must give the same masks as one straight run, and the memory cannot be rebuilt
from the written PNGs (they are hard labels at frame size). So after every batch the memory is
saved, exactly (float32), in a small state file beside the outputs (`.propagate-state.npz`,
written atomically), together with the index of the next frame and the options that shaped it.
No pickles: plain arrays and one JSON string.
"""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path

import numpy as np

from runtime.errors import CoordGANError
from runtime.fileio import atomic_write

STATE_FILE = ".propagate-state.npz"


class Memory:
    def __init__(self, recent: int):
        if recent < 0:
            raise CoordGANError(f"The memory must hold 0 or more recent frames, got {recent}.")
        self.recent_size = int(recent)
        self.refs: list[tuple[str, np.ndarray, np.ndarray]] = []  # (frame name, map, probs)
        self.recent: deque = deque(maxlen=self.recent_size or None)

    def __len__(self) -> int:
        return len(self.refs) + len(self.recent)

    def add_reference(self, name: str, corr: np.ndarray, probs: np.ndarray) -> None:
        self.refs.append((name, _f32(corr), _f32(probs)))

    def push(self, name: str, corr: np.ndarray, probs: np.ndarray) -> None:
        if self.recent_size:
            self.recent.append((name, _f32(corr), _f32(probs)))  # the deque drops the oldest

    def widen(self, index_of_old: np.ndarray, channels: int) -> None:
        """More label channels: channel c of every entry moves to index_of_old[c], the new ones hold 0."""
        def wide(entry):
            name, corr, probs = entry
            out = np.zeros((channels,) + probs.shape[1:], np.float32)
            out[index_of_old] = probs
            return name, corr, out

        self.refs = [wide(e) for e in self.refs]
        self.recent = deque((wide(e) for e in self.recent), maxlen=self.recent.maxlen)

    def entries(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        return self.refs + list(self.recent)

    def keys_values(self) -> tuple[np.ndarray, np.ndarray]:
        """K (1, R, 2, G, G) and V (1, R, C, G, G), as the lookup takes them."""
        entries = self.entries()
        return (np.stack([e[1] for e in entries])[None], np.stack([e[2] for e in entries])[None])

    # ---------------------------------------------------------------- resume state

    def save(self, path, *, next_frame: int, meta: dict) -> None:
        arrays = {"next_frame": np.int64(next_frame), "meta": np.array(json.dumps(meta))}
        for group, items in (("ref", self.refs), ("recent", list(self.recent))):
            arrays[f"{group}_names"] = np.array([e[0] for e in items], dtype=str)
            if items:
                arrays[f"{group}_maps"] = np.stack([e[1] for e in items])
                arrays[f"{group}_probs"] = np.stack([e[2] for e in items])
        with atomic_write(path) as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path, recent: int) -> tuple["Memory", int, dict]:
        """(memory, index of the next frame to process, meta) from a state file."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                memory = cls(recent)
                for group in ("ref", "recent"):
                    names = [str(n) for n in data[f"{group}_names"]]
                    maps = data[f"{group}_maps"] if names else []
                    probs = data[f"{group}_probs"] if names else []
                    for name, m, p in zip(names, maps, probs):
                        (memory.add_reference if group == "ref" else memory.push)(name, m, p)
                next_frame = int(data["next_frame"])
                meta = json.loads(str(data["meta"]))
        except (OSError, ValueError, KeyError, EOFError) as exc:
            raise CoordGANError(f"The resume state {path} is damaged ({type(exc).__name__}); start again with "
                                "--overwrite.") from None
        return memory, next_frame, meta


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)
