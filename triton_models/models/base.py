"""What the python-backend models share: config parameters, dlpack I/O, and dynamic batching.

Triton's dynamic batcher hands `execute` every request it gathered. `run_batched` concatenates the
requests whose inputs have the same per-item shapes along the batch axis, runs the model once per
such group and splits the outputs back. A group that fails is retried request by request, so one
bad request gets its own error response and the others their results.

`triton_python_backend_utils` exists only inside Triton's stub, so it is imported inside the
methods: these modules import (and `run_batched` is tested) anywhere. Tensors cross with dlpack:
the stub of nvidia-pytriton's server reads and writes zeros through as_numpy/Tensor(name, array)
under numpy 2, while np.from_dlpack / Tensor.from_dlpack work with every numpy. That stub marks a
consumed capsule "used_dlpack" rather than DLPack's "used_dltensor", so numpy's capsule destructor
reports a ValueError for every output tensor (nothing leaks: the stub frees the tensor itself);
`quiet_used_capsules` keeps those reports out of the server log.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from runtime.errors import CoordGANError

Feeds = dict[str, np.ndarray]


def pb_utils_module():
    import triton_python_backend_utils as pb_utils

    return pb_utils


def quiet_used_capsules() -> None:
    previous = sys.unraisablehook
    if getattr(previous, "coordgan_quiet", False):
        return

    def hook(unraisable):
        if isinstance(unraisable.exc_value, ValueError) and "PyCapsule_GetPointer" in str(unraisable.exc_value):
            return
        previous(unraisable)

    hook.coordgan_quiet = True
    sys.unraisablehook = hook


def _signature(feeds: Feeds) -> tuple:
    """Requests with equal signatures can share one batch: same names, dtypes and per-item shapes."""
    sizes = {name: value.shape[0] if value.ndim else None for name, value in feeds.items()}
    if None in sizes.values() or len(set(sizes.values())) != 1:
        raise CoordGANError("Every input of a request must have the same batch size, got "
                            + ", ".join(f"{n} {list(v.shape)}" for n, v in feeds.items()) + ".")
    return tuple(sorted((name, value.dtype.str, value.shape[1:]) for name, value in feeds.items()))


def error_message(exc: Exception) -> str:
    return str(exc) if isinstance(exc, CoordGANError) else f"{type(exc).__name__}: {exc}"


def run_batched(requests: list[Feeds], run: Callable[[Feeds], Feeds]) -> list[Feeds | Exception]:
    """One result per request: its outputs, or the exception that failed it."""
    results: list[Feeds | Exception | None] = [None] * len(requests)
    groups: dict[tuple, list[int]] = {}
    for i, feeds in enumerate(requests):
        try:
            groups.setdefault(_signature(feeds), []).append(i)
        except CoordGANError as exc:
            results[i] = exc
    for members in groups.values():
        try:
            results_of_group = _run_group([requests[i] for i in members], run)
        except Exception:
            if len(members) == 1:
                results_of_group = [_run_or_error(requests[members[0]], run)]
            else:  # find the culprit(s): each request alone
                results_of_group = [_run_or_error(requests[i], run) for i in members]
        for i, result in zip(members, results_of_group):
            results[i] = result
    return results


def _run_or_error(feeds: Feeds, run) -> Feeds | Exception:
    try:
        return run(feeds)
    except Exception as exc:
        return exc


def _run_group(group: list[Feeds], run) -> list[Feeds]:
    if len(group) == 1:
        return [run(group[0])]
    feeds = {name: np.concatenate([f[name] for f in group]) for name in group[0]}
    outputs = run(feeds)
    bounds = np.cumsum([0] + [next(iter(f.values())).shape[0] for f in group])
    return [{name: value[a:b] for name, value in outputs.items()} for a, b in zip(bounds[:-1], bounds[1:])]


class BatchedModel:
    """A Triton python model: subclasses set `input_names` (or set them in `setup`) and define `run`."""

    input_names: tuple[str, ...] = ()

    def initialize(self, args: dict) -> None:
        quiet_used_capsules()
        config = json.loads(args["model_config"])
        self.name = config["name"]
        self.output_names = tuple(o["name"] for o in config["output"])
        self.parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        # model_repository is this model's folder; files of a version live in <folder>/<version>/
        self.version_dir = Path(args["model_repository"]) / str(args["model_version"])
        self.setup()

    def setup(self) -> None:
        """Load what `run` needs, from self.parameters and self.version_dir."""

    def run(self, feeds: Feeds) -> Feeds:
        raise NotImplementedError

    def execute(self, requests):
        pb_utils = pb_utils_module()
        feeds, results = [], []
        for request in requests:
            try:
                feeds.append(self._read(pb_utils, request))
            except Exception as exc:  # this request fails alone
                feeds.append(exc)
        good = [f for f in feeds if not isinstance(f, Exception)]
        outputs = iter(run_batched(good, self.run))
        for f in feeds:
            results.append(f if isinstance(f, Exception) else next(outputs))
        return [self._response(pb_utils, r) for r in results]

    def _read(self, pb_utils, request) -> Feeds:
        feeds = {}
        for name in self.input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise CoordGANError(f"The {self.name} model needs an input named {name}.")
            feeds[name] = np.from_dlpack(tensor)
        return feeds

    def _response(self, pb_utils, result):
        if isinstance(result, Exception):
            return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(error_message(result)))
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor.from_dlpack(name, np.ascontiguousarray(result[name])) for name in self.output_names])


class OnnxModel(BatchedModel):
    """An ONNX model (parameter onnx_file, beside model.py) through the runtime's ONNX Runtime backend."""

    def setup(self) -> None:
        from runtime.backends.ort_backend import OrtBackend

        threads = int(self.parameters.get("threads", "0")) or None
        self.backend = OrtBackend(self.version_dir / self.parameters["onnx_file"],
                                  device=self.parameters.get("device", "cpu"), threads=threads)
        self.input_names = tuple(spec.name for spec in self.backend.inputs)

    def run(self, feeds: Feeds) -> Feeds:
        return self.backend.run(feeds)

    def finalize(self) -> None:
        self.backend.close()
