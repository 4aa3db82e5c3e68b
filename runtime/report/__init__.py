"""`coordgan report`: one HTML page for a propagation run, to look at rather than read.

    from runtime.report import write_report
    page = write_report("results/", davis="DAVIS/")   # results/report.html, results/report_files/

Per sequence a strip of frames (first, evenly spaced, last) with the masks blended in their
palette, the run's numbers and warnings, links to the masks and the overlay video; with a ground
truth, J and F per object, the overview sortable with the worst sequences first. The page works
from its folder (images beside it, relative links), with no network and no server. Torch-free:
a deployment box draws it.

Written so nothing half-done looks complete: the images are staged in a temp folder that replaces
the old one whole, then the page is written atomically, last. The images folder holds a marker file
(`.coordgan-report`); an existing <stem>_files/ without it is someone else's and is never replaced.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from PIL import Image

from runtime.errors import CoordGANError
from runtime.fileio import atomic_write, check_target
from runtime.io import masks as mask_io
from runtime.report.collect import MANIFEST, Run, frame_source, frames_by_name, pick, read_run
from runtime.report.page import render

REPORT_FILE = "report.html"
COLUMNS = 5  # frames in a sequence's strip
THUMB_HEIGHT = 128
THUMB_MAX_WIDTH = 256
MARKER = ".coordgan-report"  # in the images folder: a report made it, so a later report may replace it


def write_report(folder, out=None, *, davis=None, model=None, columns: int = COLUMNS) -> tuple[Path, Run]:
    """Write the report of the run in `folder` to `out` (default folder/report.html) and its images
    to <out stem>_files/ beside it; returns (page, the run read)."""
    run = read_run(folder, davis=davis, model=model)
    out = Path(out) if out is not None else Path(folder) / REPORT_FILE
    check_target(out, make_folder=True)
    files = out.with_name(f"{out.stem}_files")
    _check_replaceable(files)  # before any work: a folder that is not a report's is refused, untouched
    staged = Path(tempfile.mkdtemp(prefix=f".{files.name}.", dir=out.parent))
    try:
        (staged / MARKER).write_text("images of a `coordgan report` page; replaced whole when it is written again\n")
        images, notes = {}, {}
        for i, seq in enumerate(run.sequences):
            images[seq.name], notes[seq.name] = _strip(seq, i, davis, columns, staged, files.name)
        page = render(run, images, notes, out.parent)
        _replace_folder(staged, files)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    with atomic_write(out, "w") as f:
        f.write(page)
    return out, run


def export_of(artifact: str | None) -> Path | None:
    """The export folder an encoder file lies in (one with a manifest), else None (a Triton address,
    a .plan built elsewhere)."""
    if not artifact or "://" in artifact:
        return None
    folder = Path(artifact) if Path(artifact).is_dir() else Path(artifact).parent
    return folder if (folder / MANIFEST).is_file() else None


def _strip(seq, index: int, davis, columns: int, folder: Path, rel: str):
    """Thumbnails of the picked frames with their masks blended in: [(frame, src, (w, h))], notes."""
    chosen = [seq.masks[i] for i in pick(len(seq.masks), columns)]
    if not chosen:
        return [], []
    notes = []
    source, why = frame_source(seq, davis)
    frames = {}
    if source is not None:
        try:
            frames = frames_by_name(source, [m.stem for m in chosen])
        except CoordGANError as exc:
            why = f"frames not shown: {exc}"
    if why:
        notes.append(why)
    shown = []
    for k, path in enumerate(chosen):
        try:
            labels, palette = mask_io.read_mask(path, what="Mask")
        except CoordGANError as exc:
            notes.append(f"{path.name} not drawn: {exc}")
            continue
        frame = frames.get(path.stem)
        if frame is not None and frame.shape[:2] == labels.shape:
            picture = mask_io.overlay(frame, labels, palette)
        else:
            picture = mask_io.colorize(labels, palette)
        image = Image.fromarray(picture)
        scale = min(THUMB_HEIGHT / image.height, THUMB_MAX_WIDTH / image.width)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.BILINEAR)
        name = f"s{index:03d}_{k}.jpg"
        image.save(folder / name, format="JPEG", quality=85)
        shown.append((path.stem, f"{rel}/{name}", image.size))
    return shown, notes


def _check_replaceable(target: Path) -> None:
    """`target` may become the report's images folder: missing, empty, or an earlier report's (marked)."""
    if not target.exists():
        return
    if not target.is_dir():
        raise CoordGANError(f"{target} is a file; the report's images go in a folder of that name.")
    if not (target / MARKER).is_file() and any(target.iterdir()):
        raise CoordGANError(f"{target} exists and no report made it (it has no {MARKER}); move it away or write "
                            "the page elsewhere with --out.")


def _replace_folder(staged: Path, target: Path) -> None:
    """Put the staged folder in place of `target` (an earlier report's images) by renames."""
    _check_replaceable(target)
    staged.chmod(0o755)  # mkdtemp makes it 0700
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
        target.rename(old / target.name)
    staged.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
