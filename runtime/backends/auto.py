"""`auto`: for an ONNX encoder, the fastest CPU backend installed, by a short timed trial.

Where a trial is remembered (below) and the run is sure to be on the CPU, only its choice is opened.
Otherwise ONNX Runtime is opened first; where it got the CUDA provider, that is the choice (a GPU, no
trial). On the CPU, OpenVINO is opened too (where it is installed and loads the model), and each runs a
batch of the run's size: `WARMUP` runs (ONNX Runtime's first two runs of the celeba-128 --int8
encoder took 1.7x and 1.3x its steady time), then `RUNS` timed runs interleaved, the best kept.
The trial feeds synthetic inputs of the model's input shape: the encoder is dense convolutions and
matrix products, whose time does not depend on the pixel values, so the first real batch would time
the same. The slower backend is closed. The backend's `note` (shown by describe(), recorded in
summary.json) says what was chosen and the times, e.g. "auto: fastest of onnxruntime 571.0 ms,
openvino 445.2 ms per batch of 8 (trial)" (celeba-128 here).

The outcome is remembered per model file (its SHA-256) and the packages' versions under
runtime.fileio.cache_dir("backends"): a later run on this machine (a --resume, another --batch, a
cluster worker with fewer threads) takes the same backend, hence the same bytes, without a new trial,
and opens only that one (remove that folder to time them again, e.g. after a trial under heavy load). Not per batch: a resume
with another --batch must not land on the other backend, whose bytes its fingerprint refuses. The two backends agree within what
`export verify` allows (max |diff| 1e-4 on the maps; 1e-7 between them on celeba-128's maps), so the
chosen backend can change a mask's bytes only where a pixel's two best labels are that close.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from runtime.backends.base import Backend
from runtime.devices import check_device, cpu_threads
from runtime.errors import CoordGANError
from runtime.fileio import atomic_write, cache_dir, sha256_file

WARMUP, RUNS = 2, 3


def trial_feeds(backend: Backend, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of the backend's input specs, dynamic axes = batch: uint8 anywhere, float in [-1, 1]."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in backend.inputs:
        shape = [batch if d is None else d for d in spec.shape]
        if np.dtype(spec.dtype) == np.uint8:
            feeds[spec.name] = rng.integers(0, 256, shape, dtype=np.uint8)
        else:
            feeds[spec.name] = rng.uniform(-1, 1, shape).astype(spec.dtype)
    return feeds


def time_backends(backends: list[Backend], feeds: dict[str, np.ndarray], runs: int = RUNS) -> dict[str, float]:
    """Seconds per run of each backend (by name): WARMUP runs each, then `runs` interleaved rounds, the best
    of each kept (interleaved, so a burst of other load hits every backend alike)."""
    for backend in backends:
        for _ in range(WARMUP):
            backend.run(feeds)
    best = {b.name: float("inf") for b in backends}
    for _ in range(runs):
        for backend in backends:
            t0 = time.perf_counter()
            backend.run(feeds)
            best[backend.name] = min(best[backend.name], time.perf_counter() - t0)
    return best


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for dist in ("onnxruntime", "onnxruntime-gpu", "openvino"):
        try:
            out.append(f"{dist}-{version(dist)}")
        except PackageNotFoundError:
            pass
    return "_".join(out)


def _remembered_path(artifact):
    return cache_dir("backends", f"auto-{sha256_file(artifact)[:16]}-{_versions()}.json")


def _remembered(path, names: set[str]) -> tuple[dict[str, float], int] | None:
    """(the seconds a remembered trial measured for the backends of these names, its batch); None: no
    such trial."""
    try:
        trial = json.loads(path.read_text())
        seconds, batch = trial["seconds"], trial["batch"]
    except (AttributeError, OSError, ValueError, TypeError, KeyError):  # no path, no file, a damaged one
        return None
    ok = (isinstance(seconds, dict) and set(seconds) == names and all(isinstance(v, float) for v in seconds.values())
          and isinstance(batch, int))
    return (seconds, batch) if ok else None


def _remember(path, seconds: dict[str, float], batch: int) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "w") as f:
            f.write(json.dumps({"seconds": seconds, "batch": batch}))
    except (OSError, CoordGANError):  # a read-only cache: the next run times them again
        pass


def open_auto(artifact, device: str = "auto", threads: int | None = None, trial_batch: int = 8,
              remember: bool = True) -> Backend:
    """The backend `auto` names for an ONNX model (the module docstring)."""
    from runtime.backends.ort_backend import OrtBackend, may_get_cuda

    check_device(device, "device")
    threads = threads or cpu_threads()
    # Sure to be the CPU: a remembered choice opens alone. (cuda: ONNX Runtime says why it does not
    # load; a missing file: ONNX Runtime's sentence.)
    sure_cpu = device != "cuda" and not may_get_cuda(device)
    path = _remembered_path(artifact) if remember and sure_cpu and Path(artifact).is_file() else None
    if path is not None:
        known = _open_remembered(artifact, path, threads)
        if known is not None:
            return known
    ort = OrtBackend(artifact, device=device, threads=threads)
    if ort.device != "cpu":
        ort.note = "auto: ONNX Runtime's CUDA provider"
        return ort
    try:
        from runtime.backends.openvino_backend import OpenVINOBackend

        ov = OpenVINOBackend(artifact, threads=threads)
    except CoordGANError as exc:
        ort.note = f"auto: onnxruntime; openvino skipped: {str(exc).rstrip('.')}"
        return ort
    return choose([ort, ov], trial_batch, path or (_remembered_path(artifact) if remember else None))


def _open_remembered(artifact, path, threads: int) -> Backend | None:
    """The CPU backend a remembered trial of both chose, opened alone (the other one is not opened: a
    start-up saved); None where there is no such trial or the choice does not open here."""
    from runtime.backends.openvino_backend import OpenVINOBackend
    from runtime.backends.ort_backend import OrtBackend

    kinds = {"onnxruntime": OrtBackend, "openvino": OpenVINOBackend}
    found = _remembered(path, set(kinds))
    if found is None:
        return None
    seconds, batch = found
    name = min(seconds, key=seconds.get)
    try:
        backend = kinds[name](artifact, device="cpu", threads=threads)
    except CoordGANError:  # e.g. OpenVINO uninstalled since: the full procedure says what runs instead
        return None
    backend.note = _note(seconds, batch, "remembered trial")
    return backend


def _note(seconds: dict[str, float], batch: int, how: str) -> str:
    times = ", ".join(f"{name} {1e3 * s:.1f} ms" for name, s in sorted(seconds.items()))
    return f"auto: fastest of {times} per batch of {batch} ({how})"


def choose(candidates: list[Backend], trial_batch: int, remembered=None) -> Backend:
    """The fastest of `candidates` (by a trial on a batch of `trial_batch`, or the one remembered in the
    file `remembered`, whatever its batch, where the trial is then kept); the others are closed, the
    choice's note set."""
    found, how = _remembered(remembered, {b.name for b in candidates}), "remembered trial"
    if found is None:
        found, how = (time_backends(candidates, trial_feeds(candidates[0], trial_batch)), trial_batch), "trial"
        if remembered is not None:
            _remember(remembered, *found)
    seconds, batch = found
    chosen = min(candidates, key=lambda b: seconds[b.name])
    for backend in candidates:
        if backend is not chosen:
            backend.close()
    chosen.note = _note(seconds, batch, how)
    return chosen
