"""What a propagation run left in its output folder, read for the report: sequences, scores, frames.

A run's folder is one sequence (OUT/summary.json: a video or a frame folder) or a dataset
(OUT/<seq>/summary.json); `coordgan demo` puts its sequence in OUT/masks/ beside demo.json and the
ground truth gt/. A sequence folder with the resume state but no summary.json is an unfinished
run's. `--cluster` runs add OUT/cluster_summary.json (workers, retries, the sequences that failed);
it is read only while the sequence folders still hold that run's results (a later run in OUT leaves
it behind: then it is not this page's run, and the page says nothing of it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.davis import layout as davis_layout
from runtime.davis.evaluate import NothingToScore, evaluate_sequence, gt_sequences
from runtime.errors import CoordGANError
from runtime.io.video import natural_key
from runtime.propagation.cluster import FORMAT as CLUSTER_FORMAT
from runtime.propagation.cluster import SUMMARY_FILE as CLUSTER_FILE
from runtime.propagation.cluster import summary_digest
from runtime.propagation.output import FORMAT, PROBS_DIR, SUMMARY_FILE, holds_run

MANIFEST = "manifest.json"  # of an export directory (export/manifest.py, read here as plain JSON)
DEMO_FILE = "demo.json"


@dataclass
class SequenceRun:
    name: str
    folder: Path | None  # None: a cluster sequence that failed before writing anything
    summary: dict | None = None  # None: unfinished (or failed)
    masks: list[Path] = field(default_factory=list)  # the palette PNGs, in frame order
    status: str = "complete"  # complete, incomplete, failed
    notes: list[str] = field(default_factory=list)  # what the report says about it (not the run's warnings)
    truth: Path | None = None  # ground-truth folder, when scored
    scores: dict | None = None  # runtime.davis.evaluate.evaluate_sequence

    @property
    def jf(self) -> float | None:
        if not self.scores:
            return None
        return (self.scores["J_mean"] + self.scores["F_mean"]) / 2


@dataclass
class Run:
    folder: Path
    sequences: list[SequenceRun]
    cluster: dict | None = None  # cluster_summary.json
    demo: dict | None = None  # demo.json
    manifest: dict | None = None  # the export's manifest.json, when found
    manifest_note: str | None = None

    @property
    def incomplete(self) -> list[str]:
        return [s.name for s in self.sequences if s.status == "incomplete"]

    @property
    def scored(self) -> list[SequenceRun]:
        return [s for s in self.sequences if s.scores]


def read_run(folder, *, davis=None, model=None) -> Run:
    """The run in `folder`; with `davis` (a DAVIS root or a folder of ground-truth sequence folders),
    each complete sequence scored against it; `model`: the export (folder or encoder file) whose
    manifest the header shows."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CoordGANError(f"{folder} is not a folder; give the output folder of `coordgan propagate`.")
    cluster = _read_json(folder / CLUSTER_FILE, CLUSTER_FORMAT)
    demo = _read_json(folder / DEMO_FILE)
    sequences = [_read_sequence(f) for f in _sequence_folders(folder)]
    if cluster is not None and not _cluster_holds(cluster, sequences):
        cluster = None  # stale: another run has written the sequences since
    known = {s.name for s in sequences}
    for entry in (cluster or {}).get("sequences", []):
        if entry.get("status") == "failed" and entry.get("sequence") not in known:
            sequences.append(SequenceRun(entry["sequence"], None, status="failed",
                                         notes=[f"failed: {entry.get('reason') or 'no reason recorded'}"]))
    if not sequences:
        raise CoordGANError(f"{folder} holds no propagation results (no {SUMMARY_FILE} of `coordgan propagate` in it "
                            "or in its sequence folders).")
    run = Run(folder, sequences, cluster, demo)
    if davis is not None:
        _score(run, gt_sequences(davis), f"--davis {davis}", strict=True)
    elif demo is not None and (folder / "gt").is_dir():  # the demo's ground truth lies beside its masks
        _score(run, {s.name: folder / "gt" for s in sequences}, f"{folder / 'gt'}", strict=False)
    if model is not None:
        _read_manifest(run, Path(model))
    return run


def _cluster_holds(cluster: dict, sequences: list[SequenceRun]) -> bool:
    """Whether the sequence folders hold what the cluster run recorded: each sequence it did (or found
    complete) has the very summary it recorded (by summary_digest), each it failed has no summary."""
    entries = cluster.get("sequences")
    if not isinstance(entries, list) or not entries:
        return False
    complete = {s.name: s.summary for s in sequences if s.summary is not None}
    for entry in entries:
        if not isinstance(entry, dict):
            return False
        summary = complete.get(entry.get("sequence"))
        if entry.get("status") == "failed":
            if summary is not None:
                return False
        elif summary is None or not entry.get("summary_digest") or \
                summary_digest(summary) != entry["summary_digest"]:
            return False
    return True


def _sequence_folders(folder: Path) -> list[Path]:
    if holds_run(folder):
        return [folder]
    return sorted((p for p in folder.iterdir() if p.is_dir() and holds_run(p)), key=lambda p: natural_key(p.name))


def _read_json(path: Path, fmt: str | None = None) -> dict | None:
    """The JSON object in `path` (of format `fmt`), or None: missing, damaged, or not ours."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or (fmt is not None and data.get("format") != fmt):
        return None
    return data


def _read_sequence(folder: Path) -> SequenceRun:
    summary = _read_json(folder / SUMMARY_FILE, FORMAT)
    masks = sorted(folder.glob("*.png"), key=lambda p: natural_key(p.name))
    if summary is None:
        return SequenceRun(folder.name, folder, None, masks, "incomplete",
                           [f"incomplete: {len(masks)} masks written and no {SUMMARY_FILE}; finish it with "
                            "`coordgan propagate ... --resume`"])
    return SequenceRun(summary.get("sequence") or folder.name, folder, summary, masks)


def _score(run: Run, truth: dict[str, Path], what: str, *, strict: bool) -> None:
    """J and F of every complete sequence that has a ground truth: matched by name, or a one-sequence run
    (a video's, named after it) against a one-sequence truth."""
    pairs = {s.name: truth[s.name] for s in run.sequences if s.name in truth}
    if not pairs and len(truth) == 1 and [s.folder for s in run.sequences] == [run.folder]:
        pairs = {run.sequences[0].name: next(iter(truth.values()))}
    if not pairs:
        raise CoordGANError(f"{what} has none of this run's sequences ({', '.join(s.name for s in run.sequences)}); "
                            "give the ground truth the run propagated.")
    for seq in run.sequences:
        seq.truth = pairs.get(seq.name)
        if seq.truth is None:
            seq.notes.append(f"not scored: {what} has no sequence {seq.name}")
        elif seq.status != "complete":
            seq.notes.append("not scored: the sequence is not complete")
        else:
            try:
                seq.scores = evaluate_sequence(seq.folder, seq.truth)
            except NothingToScore as exc:
                seq.notes.append(f"not scored: {exc}")
            except CoordGANError as exc:
                if strict:
                    raise CoordGANError(f"{what} does not match the run's sequence {seq.name} "
                                        f"({str(exc).rstrip('.')}).") from None
                seq.notes.append(f"not scored: {exc}")


def _read_manifest(run: Run, model: Path) -> None:
    directory = model if model.is_dir() else model.parent
    manifest = _read_json(directory / MANIFEST)
    if manifest is None:
        raise CoordGANError(f"--model {model} is not an export (no readable {directory / MANIFEST}).")
    run.manifest = manifest
    encoder = model if model.is_file() else directory / manifest.get("models", {}).get("encoder", {}).get(
        "file", "encoder.onnx")
    used = {(s.summary or {}).get("fingerprint", {}).get("model") for s in run.sequences}
    used = {u for u in used if str(u).startswith("sha256:")}  # a served model is known by its description
    if encoder.is_file() and used:
        from runtime.fileio import sha256_file

        if f"sha256:{sha256_file(encoder)}" not in used:
            run.manifest_note = f"{encoder} is not the encoder this run used (its SHA-256 differs)"


# ------------------------------------------------------------------------------------------------ frames

def frame_source(seq: SequenceRun, davis=None):
    """The sequence's frames (runtime.io.video FrameSource), or (None, why not)."""
    from runtime.io.video import open_frames

    candidates = []
    if seq.summary and seq.summary.get("input"):
        candidates.append(Path(seq.summary["input"]))
    if davis is not None and davis_layout.is_davis_root(davis):
        try:
            candidates.append(davis_layout.frames_dir(davis, davis_layout.resolution(davis), seq.name))
        except CoordGANError:
            pass
    for path in candidates:
        if path.exists():
            try:
                return open_frames(path), None
            except CoordGANError as exc:
                return None, f"frames not shown: {exc}"
    where = f" ({candidates[0]} is gone)" if candidates else ""
    return None, f"frames not shown: the input is not found{where}; masks drawn alone"


def frames_by_name(source, names: list[str]) -> dict[str, np.ndarray]:
    """The frames of these names: a folder's files read directly, a video decoded up to the last one."""
    from contextlib import closing

    from runtime.io.images import read_image

    files = getattr(source, "files", None)
    if files is not None:
        by_stem = {p.stem: p for p in files}
        return {n: read_image(by_stem[n], what="Frame") for n in names if n in by_stem}
    wanted, got = set(names), {}
    with closing(source.frames()) as frames:
        for _, name, frame in frames:
            if name in wanted:
                got[name] = frame
                if len(got) == len(wanted):
                    break
    return got


def pick(count: int, columns: int) -> list[int]:
    """Indices of the first, evenly spaced and last of `count` items."""
    return np.unique(np.linspace(0, count - 1, min(columns, count)).round().astype(int)).tolist() if count else []


def outputs(seq: SequenceRun) -> dict[str, Path]:
    """Files to link: the masks folder, probabilities, the overlay video (where they exist)."""
    found = {}
    if seq.folder is not None and seq.masks:
        found["masks"] = seq.folder
    if seq.folder is not None and (seq.folder / PROBS_DIR).is_dir():
        found["probabilities"] = seq.folder / PROBS_DIR
    overlay = ((seq.summary or {}).get("outputs") or {}).get("overlay")
    if overlay and Path(overlay).is_file():
        found["overlay video"] = Path(overlay)
    return found
