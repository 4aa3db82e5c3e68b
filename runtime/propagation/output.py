"""A sequence's output folder: what may be written over, resume, the lock, and the files written.

Outputs in the folder, each written atomically (temp + rename): NAME.png per frame (palette PNG),
probs/NAME.npz with `--save-probs` (float16 grid probabilities "probs" (C, G, G) and the label of
each channel "labels"), the resume state `.propagate-state.npz` after every batch, and
`summary.json` last: it marks the sequence complete. The overlay video lies wherever it was asked.

The policy, in one place:
- A run writes its state before its first mask, so a folder of PNGs without our summary or state
  is someone else's (a reference mask's folder, '.'): never written over or deleted.
- `--resume` continues from the state, or skips a complete sequence, only if the fingerprint
  matches: the model's bytes, the input's content, the references and the options that decide
  the masks. Anything else is refused, naming what differs.
- `--overwrite` removes what an earlier run of ours left (masks, probabilities, state, summary,
  and the overlay named now), the completion marker first.
- One run at a time per folder: an exclusive lock (flock on `.propagate.lock`, released by the
  kernel when its process dies) stops a second attempt of the same sequence from writing beside
  the first. A resumed run first removes the temp files a killed writer left.
- A run that fails before writing anything removes the folder it made.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.errors import CoordGANError
from runtime.fileio import atomic_write
from runtime.io import masks as mask_io
from runtime.io.video import FrameSource, VideoWriter
from runtime.propagation.memory import STATE_FILE

SUMMARY_FILE = "summary.json"
PROBS_DIR = "probs"
LOCK_FILE = ".propagate.lock"
FORMAT = "coordgan-propagate/1"
_EDGE_BYTES = 1 << 20  # of a video hashed at each end: the container's header and index, the first frames


def fingerprint(*, model_id: str, backend: str, source: FrameSource, algorithm: dict, labels: list,
                references: dict) -> dict:
    """What decides the outputs, as a resumed run must match it: the model's identity and the backend that
    runs it (onnxruntime and openvino agree only to ~1e-7), the input's content (not its path: data staged
    elsewhere still resumes), the options, labels and references."""
    return {**algorithm, "model": model_id, "backend": backend, "input": input_digest(source),
            "frames": source.count, "labels": labels, "references": references}


def holds_run(folder) -> bool:
    """Whether a propagation run of ours left results in `folder`: our state file, or a summary in our format."""
    folder = Path(folder)
    if (folder / STATE_FILE).is_file():
        return True
    try:
        return json.loads((folder / SUMMARY_FILE).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def input_digest(source: FrameSource) -> str:
    """A hash of the input's content: a video's size and both ends of its file; a folder's frame names and
    sizes and its first and last frames' bytes; in-memory frames, all their pixels."""
    digest = hashlib.sha256()
    files = getattr(source, "files", None)
    if files is not None:
        for path in files:
            digest.update(f"{path.name}\0{path.stat().st_size}\0".encode())
        for path in dict.fromkeys((files[0], files[-1])):  # in order (a set's order changes per process)
            digest.update(path.read_bytes())
    elif source.path.is_file():
        size = source.path.stat().st_size
        digest.update(str(size).encode())
        with open(source.path, "rb") as f:
            digest.update(f.read(_EDGE_BYTES))
            f.seek(max(0, size - _EDGE_BYTES))
            digest.update(f.read(_EDGE_BYTES))
    elif getattr(source, "items", None) is not None:  # in memory already: every frame
        for frame in source.items:
            digest.update(np.ascontiguousarray(frame).tobytes())
    else:
        digest.update(str(source.path).encode())  # frames read once, as they come: nothing to re-read
    return digest.hexdigest()[:16]


class FolderBusy(CoordGANError):
    """The folder's lock is held by another run (a cluster's retry waits for it to be let go)."""


class SequenceFolder:
    """The output folder of one sequence, held (locked) from `open` to `close`."""

    def __init__(self, out_dir, source: FrameSource, overlay: Path | None = None):
        self.path = Path(out_dir)
        self.overlay = Path(overlay) if overlay else None
        self.summary, self.state = self.path / SUMMARY_FILE, self.path / STATE_FILE
        self._check_paths(source)
        self._lock_fd: int | None = None
        self._made = False

    def _check_paths(self, source: FrameSource) -> None:
        if source.path.is_dir() and self.path.resolve() == source.path.resolve():
            raise CoordGANError(f"The output folder {self.path} is the input frame folder; write the masks elsewhere.")
        if self.overlay:
            if self.overlay.is_dir():
                raise CoordGANError(f"--overlay {self.overlay} is a folder; give the video's file name.")
            if self.overlay.resolve() == source.path.resolve():
                raise CoordGANError(f"--overlay {self.overlay} is the input video; write the overlay elsewhere.")
            VideoWriter.check_name(self.overlay)

    # ---------------------------------------------------------------- opening: the policy

    def open(self, fingerprint: dict, *, resume: bool, overwrite: bool) -> dict | None:
        """Lock the folder and apply the policy. Returns the complete run's summary for `--resume` of a
        finished sequence, {} to start afresh, or {"state": path} to continue from the resume state."""
        if self.path.exists() and not self.path.is_dir():
            raise CoordGANError(f"The output folder {self.path} is a file; give a folder for the masks.")
        self._made = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CoordGANError(f"Cannot create the output folder {self.path}: {exc.strerror or exc}.") from None
        self._lock()
        ours = self._ours()
        if resume and ours:
            self._remove_temp_files()
            if self.summary.is_file():
                done = self._read_summary()
                self._check_same_run(done.get("fingerprint"), fingerprint, "holds the results of a run with")
                return {**done, "skipped": "already complete"}
            return {"state": self.state}
        if not ours and any(self.path.glob("*.png")):
            raise CoordGANError(f"{self.path} holds PNG files that no propagation run left there (it has no "
                                f"{SUMMARY_FILE} or {STATE_FILE} of ours); write the masks to another folder.")
        if ours and not resume and not overwrite:
            raise CoordGANError(f"{self.path} already holds propagation results; pass --overwrite to replace them or "
                                "--resume to continue an interrupted run.")
        if self.overlay and self.overlay.exists() and not overwrite:  # (nothing of ours here to resume)
            raise CoordGANError(f"The overlay video {self.overlay} already exists; pass --overwrite to replace it.")
        if ours:
            self._clear()
        if self.overlay and overwrite:  # an existing overlay: --overwrite said so
            self.overlay.unlink(missing_ok=True)
        return {}

    def check_state(self, meta: dict, fingerprint: dict) -> None:
        """A resume state's meta against this run's fingerprint."""
        self._check_same_run(meta.get("fingerprint"), fingerprint, "holds an interrupted run with")

    def _ours(self) -> bool:
        return holds_run(self.path)

    def _read_summary(self) -> dict:
        try:
            return json.loads(self.summary.read_text())
        except (OSError, ValueError):
            raise CoordGANError(f"{self.summary} is damaged; start again with --overwrite.") from None

    def _check_same_run(self, then: dict | None, now: dict, verb: str) -> None:
        if then != now:
            raise CoordGANError(f"{self.path} {verb} {_differences(then or {}, now)}; resume with the same model, "
                                "input, options and references, or start again with --overwrite.")

    def _clear(self) -> None:
        # The completion marker first: while the new run writes, nothing may look complete. Then what the
        # earlier run wrote, so a shorter or interrupted new run leaves none of it behind.
        self.summary.unlink(missing_ok=True)
        self.state.unlink(missing_ok=True)
        for stale in [*self.path.glob("*.png"), *(self.path / PROBS_DIR).glob("*.npz")]:
            stale.unlink(missing_ok=True)
        self._remove_temp_files()

    def _remove_temp_files(self) -> None:
        """What a killed writer left: atomic_write's `.NAME.XXXX.tmp`, VideoWriter's `.STEM.PID.tmpSUFFIX`."""
        temps = [*self.path.glob(".*.tmp"), *(self.path / PROBS_DIR).glob(".*.tmp")]
        if self.overlay:
            temps += self.overlay.parent.glob(f".{self.overlay.stem}.*.tmp{self.overlay.suffix}")
        for temp in temps:
            temp.unlink(missing_ok=True)

    def _lock(self) -> None:
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise FolderBusy(f"{self.path} is being written by another propagation run right now; wait for it "
                             "to finish or stop it first.") from None
        self._lock_fd = fd

    # ---------------------------------------------------------------- while running, and after

    def save_state(self, step, next_frame: int, meta: dict) -> None:
        step.save(self.state, next_frame=next_frame, meta=meta)

    def finish(self, summary: dict) -> None:
        """Write summary.json (the sequence is complete) and drop the resume state."""
        with atomic_write(self.summary, "w") as f:
            json.dump(summary, f, indent=2)
            f.write("\n")
        self.state.unlink(missing_ok=True)

    def close(self) -> None:
        """Let the folder go; one this run made and left with nothing in it is removed."""
        if self._lock_fd is None:
            return
        probs = self.path / PROBS_DIR
        if self._made and not any(probs.iterdir() if probs.is_dir() else ()) and \
                {p.name for p in self.path.iterdir()} <= {LOCK_FILE, PROBS_DIR}:
            if probs.is_dir():
                probs.rmdir()
            (self.path / LOCK_FILE).unlink()
            self.path.rmdir()
        os.close(self._lock_fd)
        self._lock_fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_WHAT_DIFFERS = {"model": "another model (its file's SHA-256 differs)", "input": "another input (its content differs)",
                 "frames": "another input (its frame count differs)", "labels": "other reference masks",
                 "references": "other reference masks"}


def _differences(old: dict, new: dict) -> str:
    """What differs between two fingerprints, in words: 'another model ..., other options (tau 0.01 then, 0.02 now)'."""
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    said = list(dict.fromkeys(_WHAT_DIFFERS[k] for k in keys if k in _WHAT_DIFFERS))
    options = [f"{k} {old.get(k)!r} then, {new.get(k)!r} now" for k in keys if k not in _WHAT_DIFFERS]
    if options:
        said.append(f"other options ({', '.join(options)})")
    return ", ".join(said) or "another run"


@dataclass
class MaskWriter:
    """Where a sequence's masks go: palette PNGs in out_dir (NAME.png), probs/NAME.npz with save_probs,
    and the frames with the masks blended in to an overlay video when there is one.

    With `workers` the files are written on up to that many threads (PNG and npz encoding release the
    GIL; threads start as the queue needs them) while the caller goes on; `flush` waits for them and
    raises the first failure. The overlay video is written in order by the caller.
    """

    out_dir: Path
    palette: bytes  # 256 colours
    labels: np.ndarray  # label value of each probability channel
    save_probs: bool = False
    video: VideoWriter | None = None
    workers: int = 0
    _pool: ThreadPoolExecutor | None = field(default=None, init=False, repr=False)
    _pending: list[Future] = field(default_factory=list, init=False, repr=False)

    def write(self, name: str, mask: np.ndarray, probs: np.ndarray | None, frame: np.ndarray) -> None:
        if self.workers:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="mask-writer")
            self._pending.append(self._pool.submit(self._write_files, name, mask, probs))
        else:
            self._write_files(name, mask, probs)
        if self.video:
            self.video.write(mask_io.overlay(frame, mask, self.palette))

    def _write_files(self, name: str, mask: np.ndarray, probs: np.ndarray | None) -> None:
        if self.save_probs:
            with atomic_write(self.out_dir / PROBS_DIR / f"{name}.npz") as f:
                np.savez(f, probs=probs.astype(np.float16), labels=self.labels)
        mask_io.write_mask(self.out_dir / f"{name}.png", mask, self.palette)

    def flush(self) -> None:
        """Wait until every file written so far is on disk; the first failure is raised here."""
        pending, self._pending = self._pending, []
        for future in pending:  # every one waited for, so none is still writing when this raises
            future.exception()
        for future in pending:
            future.result()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
