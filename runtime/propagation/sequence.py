"""Video mask propagation: label masks for a few annotated frames -> a mask for every frame.

    from runtime.propagation.model import CorrespondenceModel
    from runtime.propagation.sequence import PropagateOptions, Reference, propagate_sequence
    from runtime.io.video import open_frames

    with CorrespondenceModel("export/encoder.onnx") as model:
        summary = propagate_sequence(model, open_frames("clip.mp4"), [Reference.from_png("first.png")],
                                     "out/clip", PropagateOptions(batch=8, memory=3))

Frames go through the encoder `batch` at a time; each frame's correspondence map then takes one
step of runtime.propagation.step.Propagator (the algorithm: an annotated frame's mask joins the memory,
any other frame is looked up in it; the Triton model coordgan_video runs the same step).
Annotations take effect from their frame on (propagation streams forward), so frame 0 must be
annotated. This module adds the files: frames in, references resized to the frames, PNGs out
(label values kept, the first reference's palette, or the DAVIS palette for grayscale
references), resume, timing.

Outputs in `out_dir`, each written atomically (temp + rename): NAME.png per frame (palette PNG),
probs/NAME.npz with `--save-probs` (float16 grid probabilities "probs" (C, G, G) and the label of
each channel "labels"), the overlay video, the resume state `.propagate-state.npz` after every batch,
and `summary.json` last: it marks the sequence complete. Memory stays bounded: one batch of
frames plus the reference memory, whatever the video's length.
"""

from __future__ import annotations

import hashlib
import json
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from runtime.devices import cpu_threads
from runtime.errors import CoordGANError
from runtime.fileio import atomic_write
from runtime.io import masks as mask_io
from runtime.io.prefetch import prefetched
from runtime.io.video import FrameSource, VideoWriter, as_frame_source
from runtime.propagation.memory import STATE_FILE, Memory
from runtime.propagation.step import LabelChannels, Propagator
from runtime.propagation.timing import StageTimer

SUMMARY_FILE = "summary.json"
PROBS_DIR = "probs"
FORMAT = "coordgan-propagate/1"


@dataclass(frozen=True)
class PropagateOptions:
    batch: int = 8  # frames per encoder call
    memory: int = 3  # M: recent propagated frames kept as references (besides the annotated ones)
    tau: float = 0.01  # softmax temperature over L2 coordinate distances (the paper's value)
    topk: int | None = None  # keep only the k nearest reference pixels per query (None: all)
    save_probs: bool = False
    overlay: Path | None = None  # video of the frames with the masks blended in
    overwrite: bool = False
    resume: bool = False
    overlap: bool = True  # decode ahead and write files on threads beside inference (the same bytes)

    def validate(self) -> None:
        if self.batch < 1:
            raise CoordGANError(f"--batch must be at least 1, got {self.batch}.")
        if self.memory < 0:
            raise CoordGANError(f"--memory must be 0 or more frames, got {self.memory}.")
        if not 0 < self.tau < float("inf"):
            raise CoordGANError(f"--tau must be a finite number > 0, got {self.tau}.")
        if self.topk is not None and self.topk < 1:
            raise CoordGANError(f"--topk must be at least 1, got {self.topk}.")
        if self.overwrite and self.resume:
            raise CoordGANError("Choose one of --overwrite (start again) and --resume (continue).")

    def algorithm(self) -> dict:
        """The options that decide the masks: a resumed run must use the same ones."""
        return {"memory": self.memory, "tau": self.tau, "topk": self.topk}


@dataclass(frozen=True)
class Reference:
    """An annotated frame: its labels at any resolution (resized nearest to the frames)."""

    labels: np.ndarray  # (h, w) uint8
    palette: bytes | None = None  # None: grayscale labels, DAVIS colours
    frame: str | int = 0  # the frame's name (with or without extension), or its index
    source: str = "<array>"

    @classmethod
    def from_png(cls, path, frame: str | int = 0) -> "Reference":
        labels, palette = mask_io.read_mask(path, what="Reference mask")
        return cls(labels, palette, frame, str(path))

    def digest(self) -> str:
        return hashlib.sha256(np.ascontiguousarray(self.labels).tobytes() + repr(self.labels.shape).encode()
                              ).hexdigest()[:16]


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


def propagate_batch(model, step: Propagator, batch, size: tuple[int, int], out: MaskWriter, *,
                    annotated: dict | None = None, timer: StageTimer | None = None,
                    on_frame: Callable[[int], None] | None = None) -> None:
    """The propagation step of one batch of decoded frames (index, name, frame), masks written.

    The encoder runs once for the batch; then each frame, in order, either joins the memory as an
    annotated frame (its mask given in `annotated`, at frame size) or is looked up in it, and its
    mask is written. `coordgan propagate` and `coordgan bench pipeline` both run this.
    """
    timer = timer or StageTimer()
    annotated = annotated or {}
    corr = model.correspondence(np.stack([f for _, _, f in batch]), timer)
    for (index, name, frame), c in zip(batch, corr):
        tick = time.perf_counter()
        if index in annotated:
            mask = annotated[index]
            probs = step.annotate(name, c, mask)
            tick = timer.add("preprocess", tick)  # the reference mask taken to the grid
        else:
            mask, probs = step.propagate(name, c, size, timer)
            tick = time.perf_counter()
        out.write(name, mask, probs, frame)
        timer.add("write", tick)
        if on_frame:
            on_frame(index)


def propagate_sequence(model, frames, refs: Sequence[Reference], out_dir,
                       options: PropagateOptions = PropagateOptions(), *, name: str | None = None,
                       on_frame: Callable[[int, int | None], None] | None = None,
                       on_note: Callable[[str], None] | None = None) -> dict:
    """Write a mask for every frame into `out_dir`; returns the summary (also written as summary.json).

    model: a CorrespondenceModel (anything with `.correspondence(frames)` and `.lookup(q, k, v, ...)`).
    frames: a FrameSource (runtime.io.video.open_frames), frames in memory ((T, H, W, 3) uint8), or any
        iterable of (H, W, 3) uint8 frames or (name, frame) pairs (read once, as they come).
    refs: the annotated frames; one of them must be frame 0.
    on_frame(done, total): called after each frame's mask is made and handed to the writer (total None
        when unknown); its files are on disk by the end of its batch, before the resume state moves on.
    on_note(text): called once for what a user should hear (collapsed maps); also in summary["warnings"].
    """
    options.validate()
    source = as_frame_source(frames)
    out_dir = Path(out_dir)
    name = name or out_dir.name
    refs_at = _resolve_references(source, refs)
    labels = LabelChannels(np.concatenate([np.unique(r.labels) for r in refs_at.values()]))  # all, up front
    fingerprint = _fingerprint(options, refs_at, labels, source)
    start, memory, meta = _prepare_output(out_dir, source, options, fingerprint)
    if memory is None:
        return meta  # --resume of a complete sequence: its summary
    if options.save_probs:
        (out_dir / PROBS_DIR).mkdir(exist_ok=True)
    run = _SequenceRun(model, source, refs_at, labels, out_dir, options, memory, start, on_frame, on_note)
    run.state_meta = {"fingerprint": fingerprint, "frame_size": meta.get("frame_size")}
    summary = run.execute()
    summary.update(sequence=name, input=str(source.path), fingerprint=fingerprint)
    with atomic_write(out_dir / SUMMARY_FILE, "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    (out_dir / STATE_FILE).unlink(missing_ok=True)  # complete: nothing left to resume
    return summary


def _resolve_references(source: FrameSource, refs: Sequence[Reference]) -> dict[int, Reference]:
    if not refs:
        raise CoordGANError("Propagation needs at least one reference mask (for the first frame).")
    refs_at: dict[int, Reference] = {}
    for ref in refs:
        index = ref.frame if isinstance(ref.frame, int) else source.resolve(ref.frame)
        if index in refs_at:
            raise CoordGANError(f"Two reference masks are given for frame {ref.frame!r} ({refs_at[index].source} "
                                f"and {ref.source}).")
        labels = np.asarray(ref.labels)
        if (labels.ndim != 2 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer)
                or labels.min() < 0 or labels.max() > 255):
            raise CoordGANError(f"Reference mask {ref.source} must be a 2-D array of labels 0..255, got "
                                f"{labels.dtype} {list(labels.shape)}.")
        refs_at[index] = replace(ref, labels=labels.astype(np.uint8, copy=False))
    first = min(refs_at)
    if first != 0:
        raise CoordGANError(f"The first reference mask is for frame {refs_at[first].frame!r}, but propagation runs "
                            "forward from the first frame: give a mask for the first frame too.")
    palette = refs_at[0].palette
    if palette is not None:
        top = int(max(int(r.labels.max()) for r in refs_at.values()))
        if top * 3 + 3 > len(palette):
            raise CoordGANError(f"The reference masks use label {top}, but the palette of {refs_at[0].source} has only "
                                f"{len(palette) // 3} colours.")
    return refs_at


def _prepare_output(out_dir: Path, source: FrameSource, options: PropagateOptions, fingerprint: dict):
    """(first frame to process, memory, state meta); memory None and the summary for a complete sequence."""
    if source.path.is_dir() and out_dir.resolve() == source.path.resolve():
        raise CoordGANError(f"The output folder {out_dir} is the input frame folder; write the masks elsewhere.")
    summary, state = out_dir / SUMMARY_FILE, out_dir / STATE_FILE
    overlay = Path(options.overlay) if options.overlay else None
    if overlay:
        _check_overlay(overlay, source)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CoordGANError(f"Cannot create the output folder {out_dir}: {exc.strerror or exc}.") from None
    if options.resume:
        if summary.is_file():
            try:
                done = json.loads(summary.read_text())
            except (OSError, ValueError):
                raise CoordGANError(f"{summary} is damaged; start again with --overwrite.") from None
            _check_same_run(out_dir, done.get("fingerprint"), fingerprint, "holds the results of")
            return 0, None, {**done, "skipped": "already complete"}
        if state.is_file():
            memory, start, meta = Memory.load(state, options.memory)
            _check_same_run(out_dir, meta.get("fingerprint"), fingerprint, "was started with")
            return start, memory, meta
    # A run writes its state before its first mask: PNGs without summary or state are someone else's
    # (a reference mask's folder, '.'), never written over or deleted, --resume and --overwrite alike.
    ours = summary.exists() or state.exists()
    if not ours and any(out_dir.glob("*.png")):
        raise CoordGANError(f"{out_dir} holds PNG files that no propagation run left there (it has no {SUMMARY_FILE} "
                            f"or {STATE_FILE}); write the masks to another folder.")
    if options.resume:
        return 0, Memory(options.memory), {}  # nothing to continue from: start over
    if ours and not options.overwrite:
        raise CoordGANError(f"{out_dir} already holds propagation results; pass --overwrite to replace them or "
                            "--resume to continue an interrupted run.")
    if overlay and overlay.exists() and not options.overwrite:
        raise CoordGANError(f"The overlay video {overlay} already exists; pass --overwrite to replace it.")
    # Remove the completion marker first: while the new run writes, nothing may look complete. Then
    # what the earlier run wrote, so a shorter or interrupted new run leaves none of it behind.
    summary.unlink(missing_ok=True)
    state.unlink(missing_ok=True)
    ours_left = [*out_dir.glob("*.png"), *(out_dir / PROBS_DIR).glob("*.npz")] if ours else []
    for stale in [*ours_left, *([overlay] if overlay else [])]:  # an existing overlay: --overwrite said so
        stale.unlink(missing_ok=True)
    return 0, Memory(options.memory), {}


def _check_overlay(overlay: Path, source: FrameSource) -> None:
    if overlay.is_dir():
        raise CoordGANError(f"--overlay {overlay} is a folder; give the video's file name.")
    if overlay.resolve() == source.path.resolve():
        raise CoordGANError(f"--overlay {overlay} is the input video; write the overlay elsewhere.")
    VideoWriter.check_name(overlay)


def _fingerprint(options: PropagateOptions, refs_at: dict, labels: LabelChannels, source: FrameSource) -> dict:
    """What decides the masks: a resumed run must match it. The input counts by name and length, not
    path, so data staged elsewhere (a job's scratch disk) still resumes; the model is the caller's."""
    return {**options.algorithm(), "input": source.path.name, "frames": source.count, "labels": labels.values.tolist(),
            "references": {str(i): refs_at[i].digest() for i in sorted(refs_at)}}


def _check_same_run(out_dir: Path, then: dict | None, now: dict, verb: str) -> None:
    if then is None:  # a summary from before fingerprints: complete, as it says
        return
    if "input" not in then:  # a state from before the input was part of it
        now = {k: v for k, v in now.items() if k not in ("input", "frames")}
    if then != now:
        raise CoordGANError(f"{out_dir} {verb} another input, other options or other references "
                            f"({_differences(then, now)}); resume with the same ones, or start again "
                            "with --overwrite.")


def _differences(old: dict, new: dict) -> str:
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return ", ".join(f"{k} {old.get(k)!r} then, {new.get(k)!r} now" if k not in ("references", "labels")
                     else f"different {k}" for k in keys) or "unknown"


class _SequenceRun:
    """One pass over a sequence's frames, from `start` on."""

    def __init__(self, model, source, refs_at, labels, out_dir, options, memory, start, on_frame, on_note):
        self.model, self.source, self.refs_at, self.labels = model, source, refs_at, labels
        self.out_dir, self.options, self.start = out_dir, options, start
        self.step = Propagator(model.lookup, memory=memory, tau=options.tau, topk=options.topk, labels=labels.values)
        self.palette = mask_io.full_palette(refs_at[0].palette)
        self.on_frame = on_frame or (lambda done, total: None)
        self.on_note = on_note or (lambda note: None)
        self.timer = StageTimer()
        self.out: MaskWriter | None = None
        self.size = None  # (H, W) of the frames
        self.full_refs: dict[int, np.ndarray] = {}  # annotated labels at frame size
        self.names: dict[int, str] = {}  # of the annotated frames
        self.seen = start  # frames known to exist
        self.state_meta: dict = {}
        self.processed = 0

    def execute(self) -> dict:
        wall = time.perf_counter()
        overlay = self.options.overlay
        writer = VideoWriter(overlay, fps=self.source.fps) if overlay else None
        self.out = MaskWriter(self.out_dir, self.palette, self.labels.values, self.options.save_probs, writer,
                              workers=cpu_threads() if self.options.overlap else 0)
        try:
            self._loop(writer)
            self._check_all_references_seen()
            self.out.close()
            if writer:
                writer.close()
        except BaseException:
            try:
                self.out.close()  # (nothing is left writing; a write error is not the first news here)
            except Exception:
                pass
            if writer:
                writer.abort()
            raise
        wall = time.perf_counter() - wall
        return self._summary(wall)

    def _loop(self, writer):
        # An overlay video is rebuilt from frame 0 on resume (a video cannot be appended to), so the
        # frames before `start` are read then, composed with their masks already on disk.
        first = 0 if writer else self.start
        if self.start:
            self.on_frame(self.start, self.source.count)
        # read up to a batch ahead ("decode" is then the time spent waiting for frames)
        ahead = self.options.batch if self.options.overlap and self.source.read_ahead else 0
        with closing(prefetched(self.source.frames(first), ahead)) as frames:  # stopped on any exit
            self._consume(frames, writer)

    def _consume(self, frames, writer):
        batch = []
        tick = time.perf_counter()
        for index, name, frame in frames:
            tick = self.timer.add("decode", tick)
            self.seen = max(self.seen, index + 1)
            if index in self.refs_at:
                self.names[index] = name  # for the summary; not every frame's (videos may be long)
            if self.size is None:
                self._set_frame_size(frame.shape[:2])
            if index < self.start:
                done_mask, _ = mask_io.read_mask(self.out_dir / f"{name}.png", what="Earlier output")
                writer.write(mask_io.overlay(frame, done_mask, self.palette))
                tick = self.timer.add("write", tick)
                continue
            batch.append((index, name, frame))
            if len(batch) == self.options.batch:
                self._process(batch)
                batch = []
            tick = time.perf_counter()
        if batch:
            self._process(batch)

    def _set_frame_size(self, size):
        self.size = tuple(size)
        self.state_meta["frame_size"] = list(self.size)
        for index, ref in self.refs_at.items():  # all of them now: fail before writing anything
            self.full_refs[index] = mask_io.resize_mask(ref.labels, self.size, what=f"Reference mask {ref.source}")

    def _process(self, batch):
        if not self.processed:  # the folder is recognisably a run's before its first mask exists
            self.step.memory.save(self.out_dir / STATE_FILE, next_frame=batch[0][0], meta=self.state_meta)

        def done(index):
            self.processed += 1
            self.on_frame(index + 1, self.source.count)

        said = len(self.step.notes)
        propagate_batch(self.model, self.step, batch, self.size, self.out, annotated=self.full_refs,
                        timer=self.timer, on_frame=done)
        for note in self.step.notes[said:]:
            self.on_note(note)
        # Saved after the batch's files are on disk: a resumed run restarts at a batch boundary, as
        # this one did, and never past a mask that was not written.
        tick = time.perf_counter()
        self.out.flush()
        self.step.memory.save(self.out_dir / STATE_FILE, next_frame=batch[-1][0] + 1, meta=self.state_meta)
        self.timer.add("write", tick)

    def _check_all_references_seen(self):
        late = [i for i in self.refs_at if i >= self.seen]
        if late:
            ref = self.refs_at[min(late)]
            raise CoordGANError(f"Reference mask {ref.source} is for frame {ref.frame!r}, beyond the last frame of "
                                f"{self.source.path} ({self.seen} frames).")

    def _frame_size_wh(self):
        size = self.size or self.state_meta.get("frame_size")  # a resume with nothing left reads no frame
        return [int(size[1]), int(size[0])] if size else None

    def _summary(self, wall: float) -> dict:
        o = self.options
        seconds = {k: round(v, 4) for k, v in self.timer.seconds.items()}
        backend = getattr(self.model, "backend", None)
        return {
            "format": FORMAT,
            "frames": self.seen,
            "frames_processed": self.processed,
            "resumed_from": self.start or None,
            "frames_per_s": round(self.processed / wall, 3) if wall > 0 else None,
            "seconds": {**seconds, "total": round(wall, 4)},
            "frame_size": self._frame_size_wh(),
            "labels": self.labels.values.tolist(),
            "references": [{"frame": self.names.get(i, str(r.frame)), "mask": r.source}
                           for i, r in sorted(self.refs_at.items())],
            "options": {"batch": o.batch, **o.algorithm(), "save_probs": o.save_probs},
            "model": backend.describe() if hasattr(backend, "describe") else type(self.model).__name__,
            "outputs": {"masks": str(self.out_dir), "probs": str(self.out_dir / PROBS_DIR) if o.save_probs else None,
                        "overlay": str(o.overlay) if o.overlay else None},
            "warnings": list(self.step.notes),
            "completed": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
