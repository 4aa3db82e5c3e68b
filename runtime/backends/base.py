"""One interface for every inference backend: load an artifact, describe its I/O, run a batch.

A backend takes and returns named numpy arrays, so callers (the correspondence model, video
propagation, the benchmark) never care whether ONNX Runtime, TensorRT or a Triton server runs
the graph. Shapes use None for dynamic axes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from runtime.errors import CoordGANError


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple  # ints, None where dynamic
    dtype: np.dtype

    def dims(self) -> str:
        return "[" + ",".join("?" if d is None else str(d) for d in self.shape) + "]"

    def describe(self) -> str:
        return f"{self.name} {np.dtype(self.dtype).name}{self.dims()}"


class Backend(ABC):
    """A loaded model. Subclasses set `name`, `device`, `inputs` and `outputs`."""

    name: str = "backend"
    device: str = "cpu"
    note: str = ""  # how it was chosen (runtime.backends.auto), said by describe()
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    @abstractmethod
    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ...

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; feeds are checked against the model's inputs first."""
        return self._run(self.check_feeds(feeds))

    def check_feeds(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        expected = {spec.name: spec for spec in self.inputs}
        missing = sorted(set(expected) - set(feeds))
        unknown = sorted(set(feeds) - set(expected))
        if missing or unknown:
            raise CoordGANError(
                f"The {self.name} model takes inputs {', '.join(s.describe() for s in self.inputs)}; "
                f"got {', '.join(sorted(feeds)) or 'none'}.")
        checked = {}
        for key, value in feeds.items():
            spec = expected[key]
            value = np.asarray(value)
            if value.dtype != spec.dtype:
                raise CoordGANError(f"Input {key} must be {np.dtype(spec.dtype).name}, got {value.dtype.name}.")
            if value.ndim != len(spec.shape) or any(
                    d is not None and d != v for d, v in zip(spec.shape, value.shape)):
                raise CoordGANError(f"Input {key} must have shape {spec.dims()}, "
                                    f"got {list(value.shape)}.")
            checked[key] = np.ascontiguousarray(value)
        return checked

    def close(self) -> None:
        """Release sessions, device memory, connections."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def describe(self) -> str:
        ins = ", ".join(s.describe() for s in self.inputs)
        outs = ", ".join(s.describe() for s in self.outputs)
        note = f" ({self.note})" if self.note else ""
        return f"{self.name} on {self.device}{note}: ({ins}) -> ({outs})"
