"""What `coordgan propagate` works on: the input resolved into sequences, references and outputs.

An input is a video file, a frame folder (one sequence each, written to OUT/), or a DAVIS root
(one sequence per folder under JPEGImages/<res>, written to OUT/<seq>/). `--shard i/n` keeps
every n-th of the sorted sequence names starting at i (0-based), so n processes on n machines
split a dataset without talking to each other, and the same shard always gets the same sequences.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

from runtime.davis import layout as davis
from runtime.errors import CoordGANError
from runtime.io.video import FrameSource, open_frames
from runtime.propagation.observer import CallbackObserver
from runtime.propagation.sequence import PropagateOptions, Reference, propagate_sequence


@dataclass(frozen=True)
class SequenceJob:
    name: str
    frames: Path  # video file or frame folder
    refs: tuple[tuple[str | int, Path], ...]  # (frame name or index, mask PNG)
    out_dir: Path
    overlay: Path | None = None

    def open(self) -> tuple[FrameSource, list[Reference]]:
        """The frame source and the references, read (the masks are checked here)."""
        source = open_frames(self.frames)
        return source, [Reference.from_png(path, frame) for frame, path in self.refs]


def run_jobs(model, jobs: list[SequenceJob], options: PropagateOptions, *,
             frames_bar: Callable[[str], contextlib.AbstractContextManager] | None = None,
             on_note: Callable[[str, str], None] | None = None) -> Iterator[tuple[SequenceJob, dict]]:
    """Propagate the jobs in order, yielding (job, summary) as each completes. Every input and reference
    mask is opened and checked before the first output is written. frames_bar(name) is a context that
    gives on_frame(done, total) for one sequence (a progress bar); on_note(name, text) hears a
    sequence's warnings as they come."""
    opened = [job.open() for job in jobs]
    for job, (source, refs) in zip(jobs, opened):
        with (frames_bar(job.name) if frames_bar else contextlib.nullcontext()) as on_frame:
            observer = CallbackObserver(on_frame, (lambda text, name=job.name: on_note(name, text)) if on_note else None)
            summary = propagate_sequence(model, source, refs, job.out_dir, replace(options, overlay=job.overlay),
                                         name=job.name, observer=observer)
        yield job, summary


def parse_ref(text: str) -> tuple[str | int, Path]:
    """'mask.png' (the first frame) or 'FRAME=mask.png' (FRAME: a frame name or index)."""
    if "=" in text and not Path(text).exists():
        frame, _, path = text.partition("=")
        if not frame or not path:
            raise CoordGANError(f"--ref {text!r} must be MASK.png or FRAME=MASK.png.")
        return frame, Path(path)
    return 0, Path(text)


def parse_shard(text: str | None) -> tuple[int, int]:
    if not text:
        return 0, 1
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise CoordGANError(f"--shard must be I/N (e.g. 0/4), not {text!r}.") from None
    if n < 1 or not 0 <= i < n:
        raise CoordGANError(f"--shard {text}: I must be in 0..N-1 and N at least 1.")
    return i, n


def overlay_path(overlay: Path | None, seq: str, several: bool) -> Path | None:
    """The overlay of one sequence: the path as given, or NAME_<seq>.EXT beside it for a dataset."""
    if overlay is None or not several:
        return overlay
    return overlay.with_name(f"{overlay.stem}_{seq}{overlay.suffix}")


def plan(input_path, out, *, refs=(), seqs=(), resolution: str | None = None, split: str | None = None,
         ref_frames: str = "auto", shard: str | None = None, overlay=None) -> list[SequenceJob]:
    """The sequences this process propagates (after sharding), in sorted name order."""
    input_path, out = Path(input_path), Path(out)
    overlay = Path(overlay) if overlay else None
    if not input_path.exists():
        raise CoordGANError(f"Input {input_path} does not exist.")
    index, count = parse_shard(shard)
    davis.check_ref_frames(ref_frames)
    if davis.is_davis_root(input_path):
        if refs:
            raise CoordGANError("A DAVIS root takes its reference masks from Annotations/; --ref applies to a video "
                                "or a frame folder (choose which annotations with --ref-frames).")
        res = davis.resolution(input_path, resolution)
        names = davis.sequences(input_path, res, split, list(seqs))[index::count]
        several = len(davis.sequences(input_path, res, split, list(seqs))) > 1
        return [SequenceJob(seq, davis.frames_dir(input_path, res, seq),
                            tuple((p.stem, p) for p in davis.reference_files(input_path, res, seq, ref_frames)),
                            out / seq, overlay_path(overlay, seq, several)) for seq in names]
    if seqs or split or ref_frames != "auto":
        raise CoordGANError(f"--seq, --split and --ref-frames apply to a DAVIS root; {input_path} is a single "
                            "sequence (a video or a frame folder).")
    if not refs:
        raise CoordGANError("Give the first frame's label mask with --ref MASK.png (and FRAME=MASK.png for more "
                            "annotated frames).")
    name = input_path.stem if input_path.is_file() else input_path.name
    jobs = [SequenceJob(name, input_path, tuple(parse_ref(r) for r in refs), out, overlay)]
    return jobs[index::count]
