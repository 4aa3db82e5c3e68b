"""A sequence's frames, batch by batch, through the propagation step into its output folder.

    from runtime.propagation.model import CorrespondenceModel
    from runtime.propagation.sequence import PropagateOptions, Reference, propagate_sequence
    from runtime.io.video import open_frames

    with CorrespondenceModel("export/encoder.onnx") as model:
        summary = propagate_sequence(model, open_frames("clip.mp4"), [Reference.from_png("first.png")],
                                     "out/clip", PropagateOptions(batch=8, memory=3))

The frame's algorithm is the step's (step.py); the folder, its files and the resume policy are
output.py's. This module reads the frames (decoded up to a batch ahead on a thread), runs the
encoder once per batch, hands each frame to the step and its mask to the writer, and saves the
step's state after each batch, once the batch's files are on disk. Annotations take effect from
their frame on (propagation streams forward), so frame 0 must be annotated. Memory stays bounded:
one batch of frames plus the reference memory, whatever the video's length.
"""

from __future__ import annotations

import hashlib
import time
from contextlib import closing
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from runtime.devices import cpu_threads
from runtime.errors import CoordGANError
from runtime.io import masks as mask_io
from runtime.io.prefetch import prefetched
from runtime.io.video import FrameSource, VideoWriter, as_frame_source
from runtime.lookup import choose_impl
from runtime.lookup.spec import IMPLS, LookupParams
from runtime.propagation.observer import Observer
from runtime.propagation.output import FORMAT, PROBS_DIR, MaskWriter, SequenceFolder, fingerprint
from runtime.propagation.step import LabelChannels, Propagator


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
    lookup: str = "auto"  # the runtime.lookup path (runtime.lookup.impl_for_device of --device)

    def validate(self) -> LookupParams:
        """Check every option; returns the lookup's parameters."""
        if self.batch < 1:
            raise CoordGANError(f"--batch must be at least 1, got {self.batch}.")
        if self.overwrite and self.resume:
            raise CoordGANError("Choose one of --overwrite (start again) and --resume (continue).")
        if self.lookup not in IMPLS:
            raise CoordGANError(f"The lookup path must be one of {', '.join(IMPLS)}, got {self.lookup!r}.")
        return self.params

    @property
    def params(self) -> LookupParams:
        return LookupParams.with_topk(memory=self.memory, tau=self.tau, topk=self.topk)

    def algorithm(self) -> dict:
        """The options that decide the masks: a resumed run must use the same ones."""
        return {"memory": self.memory, "tau": self.tau, "topk": self.topk}


@dataclass(frozen=True)
class Reference:
    """An annotated frame: its labels at any resolution (resized nearest to the frames)."""

    labels: np.ndarray  # (h, w) uint8; 255 is void (DAVIS): neither propagated nor predicted
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


def propagate_batch(model, step: Propagator, batch, size: tuple[int, int], out: MaskWriter, *,
                    annotated: dict | None = None, on_frame: Callable[[int], None] | None = None) -> None:
    """One batch of decoded frames (index, name, frame): the encoder once, then each frame's step and
    mask written (`coordgan bench pipeline` times this)."""
    corr = model.correspondence(np.stack([f for _, _, f in batch]), step.observer)
    step_batch(step, batch, corr, size, out, annotated=annotated, on_frame=on_frame)


def step_batch(step: Propagator, batch, corr: np.ndarray, size: tuple[int, int], out: MaskWriter, *,
               annotated: dict | None = None, on_frame: Callable[[int], None] | None = None) -> None:
    """Each frame of a batch, in order: an annotated one (its mask given in `annotated`, at frame size)
    joins the memory, any other is looked up in it; its mask goes to the writer."""
    annotated = annotated or {}
    for (index, name, frame), c in zip(batch, corr):
        if index in annotated:
            mask = annotated[index]
            probs = step.annotate(name, c, mask)
        else:
            mask, probs = step.propagate(name, c, size)
        with step.observer.stage("write"):
            out.write(name, mask, probs, frame)
        if on_frame:
            on_frame(index)


def propagate_sequence(model, frames, refs: Sequence[Reference], out_dir,
                       options: PropagateOptions = PropagateOptions(), *, name: str | None = None,
                       observer: Observer | None = None) -> dict:
    """Write a mask for every frame into `out_dir`; returns the summary (also written as summary.json).

    model: a CorrespondenceModel (anything with `.correspondence(frames, observer)`, `.identity()` and `.backend`).
    frames: a FrameSource (runtime.io.video.open_frames), frames in memory ((T, H, W, 3) uint8), or any
        iterable of (H, W, 3) uint8 frames or (name, frame) pairs (read once, as they come).
    refs: the annotated frames; one of them must be frame 0.
    observer: hears frames done, notes (collapsed maps; also in summary["warnings"]) and stage seconds.
    """
    params = options.validate()
    observer = observer or Observer()
    source = as_frame_source(frames)
    out_dir = Path(out_dir)
    refs_at = _resolve_references(source, refs)
    labels = LabelChannels(np.concatenate([np.unique(r.labels) for r in refs_at.values()]))  # all, up front
    if not len(labels):
        raise CoordGANError(f"Reference mask {refs_at[0].source} holds only void pixels (255); give at least one "
                            "label to propagate.")
    # the lookup path that will run (auto resolved here: a resume on a machine that picks another is refused)
    impl = choose_impl(options.lookup, classes=len(labels), mode=params.mode, k=params.k)
    resolved = replace(options, lookup=impl)
    identity = fingerprint(model_id=model.identity(), backend=getattr(model.backend, "name", "?"), source=source,
                           algorithm={**resolved.algorithm(), "save_probs": options.save_probs, "lookup": impl},
                           labels=labels.values.tolist(),
                         references={str(i): refs_at[i].digest() for i in sorted(refs_at)})
    with SequenceFolder(out_dir, source, options.overlay) as folder:
        opened = folder.open(identity, resume=options.resume, overwrite=options.overwrite)
        if "skipped" in opened:
            return opened  # --resume of a complete sequence: its summary
        if "state" in opened:
            step, start, meta = Propagator.restore(opened["state"], params, impl=impl, observer=observer)
            folder.check_state(meta, identity)
        else:
            step, start, meta = Propagator(params, impl=impl, labels=labels.values, observer=observer), 0, {}
        run = _Pass(step, folder, source, refs_at, resolved, start, {"fingerprint": identity, **meta})
        summary = run.execute(model)
        summary.update(sequence=name or out_dir.name, input=str(source.path), fingerprint=identity)
        folder.finish(summary)
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




class _Pass:
    """One pass over a sequence's frames, from `start` on, and the summary it ends with."""

    def __init__(self, step: Propagator, folder: SequenceFolder, source: FrameSource, refs_at: dict,
                 options: PropagateOptions, start: int, meta: dict):
        self.step, self.folder, self.source, self.refs_at, self.options = step, folder, source, refs_at, options
        self.start = start
        self.meta = meta  # saved with every state: the fingerprint, the frame size
        self.palette = mask_io.full_palette(refs_at[0].palette)
        self.size: tuple[int, int] | None = None  # (H, W) of the frames
        self.full_refs: dict[int, np.ndarray] = {}  # annotated labels at frame size
        self.names: dict[int, str] = {}  # of the annotated frames
        self.seen = start  # frames known to exist
        self.processed = 0

    def execute(self, model) -> dict:
        wall = time.perf_counter()
        o = self.options
        video = VideoWriter(o.overlay, fps=self.source.fps) if o.overlay else None
        if o.save_probs:
            (self.folder.path / PROBS_DIR).mkdir(exist_ok=True)
        out = MaskWriter(self.folder.path, self.palette, self.step.labels.values, o.save_probs, video,
                         workers=cpu_threads() if o.overlap else 0)
        try:
            self._loop(model, out)
            self._check_all_references_seen()
            out.close()
            if video:
                video.close()
        except BaseException:
            try:
                out.close()  # (nothing is left writing; a write error is not the first news here)
            except Exception:
                pass
            if video:
                video.abort()
            raise
        backend = getattr(model, "backend", None)
        described = backend.describe() if hasattr(backend, "describe") else type(model).__name__
        return self._summary(time.perf_counter() - wall, described)

    def _loop(self, model, out: MaskWriter) -> None:
        observer = self.step.observer
        # An overlay video is rebuilt from frame 0 on resume (a video cannot be appended to), so the
        # frames before `start` are read then, composed with their masks already on disk.
        first = 0 if out.video else self.start
        if self.start:
            observer.frame_done(self.start, self.source.count)
        # read up to a batch ahead ("decode" is then the time spent waiting for frames)
        ahead = self.options.batch if self.options.overlap and self.source.read_ahead else 0
        batch = []
        with closing(prefetched(self.source.frames(first), ahead)) as frames:  # stopped on any exit
            while True:
                with observer.stage("decode"):
                    item = next(frames, None)
                if item is None:
                    break
                index, name, frame = item
                self.seen = max(self.seen, index + 1)
                if index in self.refs_at:
                    self.names[index] = name  # for the summary; not every frame's (videos may be long)
                if self.size is None:
                    self._set_frame_size(frame.shape[:2])
                if index < self.start:
                    with observer.stage("write"):
                        done, _ = mask_io.read_mask(self.folder.path / f"{name}.png", what="Earlier output")
                        out.video.write(mask_io.overlay(frame, done, self.palette))
                    continue
                batch.append(item)
                if len(batch) == self.options.batch:
                    self._process(model, batch, out)
                    batch = []
        if batch:
            self._process(model, batch, out)

    def _set_frame_size(self, size) -> None:
        self.size = tuple(size)
        self.meta["frame_size"] = list(self.size)
        for index, ref in self.refs_at.items():  # all of them now: fail before writing anything
            self.full_refs[index] = mask_io.resize_mask(ref.labels, self.size, what=f"Reference mask {ref.source}")

    def _process(self, model, batch, out: MaskWriter) -> None:
        corr = model.correspondence(np.stack([f for _, _, f in batch]), self.step.observer)
        if not self.processed:  # the encoder ran: the folder becomes recognisably a run's before its first mask
            self.folder.save_state(self.step, batch[0][0], self.meta)
        step_batch(self.step, batch, corr, self.size, out, annotated=self.full_refs, on_frame=self._frame_done)
        # Saved after the batch's files are on disk: a resumed run restarts at a batch boundary, as
        # this one did, and never past a mask that was not written.
        with self.step.observer.stage("write"):
            out.flush()
            self.folder.save_state(self.step, batch[-1][0] + 1, self.meta)

    def _frame_done(self, index: int) -> None:
        self.processed += 1
        self.step.observer.frame_done(index + 1, self.source.count)

    def _check_all_references_seen(self) -> None:
        late = [i for i in self.refs_at if i >= self.seen]
        if late:
            ref = self.refs_at[min(late)]
            raise CoordGANError(f"Reference mask {ref.source} is for frame {ref.frame!r}, beyond the last frame of "
                                f"{self.source.path} ({self.seen} frames).")

    def _summary(self, wall: float, model: str) -> dict:
        o = self.options
        size = self.size or self.meta.get("frame_size")  # a resume with nothing left reads no frame
        return {
            "format": FORMAT,
            "frames": self.seen,
            "frames_processed": self.processed,
            "resumed_from": self.start or None,
            "frames_per_s": round(self.processed / wall, 3) if wall > 0 else None,
            "seconds": {**{k: round(v, 4) for k, v in self.step.observer.seconds.items()}, "total": round(wall, 4)},
            "frame_size": [int(size[1]), int(size[0])] if size else None,
            "labels": self.step.labels.values.tolist(),
            "references": [{"frame": self.names.get(i, str(r.frame)), "mask": r.source}
                           for i, r in sorted(self.refs_at.items())],
            "options": {"batch": o.batch, **o.algorithm(), "save_probs": o.save_probs, "lookup": o.lookup},
            "model": model,
            "outputs": {"masks": str(self.folder.path),
                        "probs": str(self.folder.path / PROBS_DIR) if o.save_probs else None,
                        "overlay": str(o.overlay) if o.overlay else None},
            "warnings": list(self.step.notes),
            "completed": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
