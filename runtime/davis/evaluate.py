"""`coordgan eval-video PRED GT`: J and F per sequence and object, DAVIS style.

Layouts (GT decides, PRED follows):
* GT is a DAVIS root (Annotations/<res>/<seq>/) or a folder of sequence folders: every sequence
  is evaluated, predictions read from PRED/<seq>/ (as `coordgan propagate` writes a dataset);
* GT is one sequence folder of PNGs: PRED is one folder of PNGs, which names the sequence (or
  PRED/<seq>/ holding them).

Masks are palette or grayscale PNGs, pixel value = object id; 255 in the ground truth is void
(ignored), except in a grayscale 0/255 mask, which reads as one object (DAVIS 2016). Objects are
the ids found in the ground truth of the sequence. Like the DAVIS 2017 evaluation, the first and
the last frame are left out (the first is the given reference) unless `all_frames`.
Every ground-truth frame needs a prediction with the same name and size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.davis import layout as davis
from runtime.davis import metrics
from runtime.errors import CoordGANError
from runtime.io.masks import VOID, read_mask
from runtime.io.video import natural_key

CONVENTION = ("DAVIS: J = IoU over non-void pixels (1 where neither mask holds the object), F = boundary "
              "F-measure with tolerance ceil(0.008 * diagonal) px")


class NothingToScore(CoordGANError):
    """A ground truth too short for the DAVIS protocol (it leaves out the first and the last frame)."""


def _pngs(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.png"), key=lambda p: natural_key(p.name)) if folder.is_dir() else []


def gt_sequences(gt, resolution: str | None = None) -> dict[str, Path]:
    """Sequence name -> ground-truth folder."""
    gt = Path(gt)
    if not gt.is_dir():
        raise CoordGANError(f"Ground truth {gt} is not a folder.")
    if (gt / "Annotations").is_dir():
        gt = gt / "Annotations" / davis.resolution(gt, resolution, folder="Annotations")
    if _pngs(gt):
        return {gt.name: gt}
    seqs = {p.name: p for p in sorted(gt.iterdir()) if p.is_dir() and _pngs(p)}
    if not seqs:
        raise CoordGANError(f"Ground truth {gt} holds no .png masks (nor sequence folders of them).")
    return seqs


def _pred_folder(pred: Path, seq: str, single: bool) -> Path:
    if (pred / seq).is_dir():
        return pred / seq
    if single and _pngs(pred):
        return pred
    raise CoordGANError(f"Predictions for sequence {seq!r} are missing (no {pred / seq} folder).")


def evaluate_sequence(pred_dir, gt_dir, *, all_frames: bool = False, bound_th: float = metrics.BOUND_TH) -> dict:
    """Per-object J and F (per frame, and their statistics) of one sequence."""
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    gt_files = _pngs(gt_dir)
    if not gt_files:
        raise CoordGANError(f"Ground truth {gt_dir} holds no .png masks.")
    gts = [_read_gt(p) for p in gt_files]
    objects = sorted(set().union(*(np.unique(g).tolist() for g in gts)) - {0, VOID})
    if not all_frames and len(gt_files) <= 2:
        raise NothingToScore(f"Ground truth {gt_dir} has {len(gt_files)} frame(s); DAVIS scoring leaves out the "
                            "first (the given reference) and the last, so no frame is left to score (pass "
                            "--all-frames to score them anyway).")
    frames = gt_files if all_frames else gt_files[1:-1]
    per_object = {o: {"J": [], "F": []} for o in objects}
    for path in frames:
        gt = gts[gt_files.index(path)]
        pred = _read_pred(pred_dir / path.name, gt.shape, path)
        void = gt == VOID
        for o in objects:
            p, g = pred == o, gt == o
            per_object[o]["J"].append(metrics.region_similarity(p, g, void))
            per_object[o]["F"].append(metrics.boundary_f(p, g, void, bound_th))
    result = {"frames": [p.stem for p in frames], "objects": {}}
    for o, scores in per_object.items():
        result["objects"][str(o)] = {"J": metrics.statistics(scores["J"]), "F": metrics.statistics(scores["F"]),
                                     "J_per_frame": scores["J"], "F_per_frame": scores["F"]}
    result["J_mean"] = _mean(v["J"]["mean"] for v in result["objects"].values())
    result["F_mean"] = _mean(v["F"]["mean"] for v in result["objects"].values())
    return result


def evaluate(pred, gt, *, all_frames: bool = False, resolution: str | None = None,
             bound_th: float = metrics.BOUND_TH) -> dict:
    """J and F for every sequence of GT, and the DAVIS global means over all (sequence, object) pairs.

    A sequence whose ground truth leaves no frame to score (one or two frames) is left out, named in
    "skipped" with the reason; when that leaves nothing, the reason is the error.
    """
    pred = Path(pred)
    if not pred.is_dir():
        raise CoordGANError(f"Predictions {pred} is not a folder.")
    seqs = gt_sequences(gt, resolution)
    results, skipped = {}, {}
    for seq, folder in seqs.items():
        pred_dir = _pred_folder(pred, seq, len(seqs) == 1)
        if pred_dir == pred:  # one folder of masks each side: named as the results, not "gt" or "Annotations"
            seq = pred.resolve().name
        try:
            results[seq] = evaluate_sequence(pred_dir, folder, all_frames=all_frames, bound_th=bound_th)
        except NothingToScore as exc:
            skipped[seq] = str(exc)
    if not results:
        raise CoordGANError(next(iter(skipped.values())) if len(skipped) == 1 else
                            f"No sequence of {gt} has a frame left to score (each has at most 2 ground-truth "
                            "frames; pass --all-frames to score them anyway).")
    objs = [o for r in results.values() for o in r["objects"].values()]
    g = {}
    for m in ("J", "F"):
        for stat in ("mean", "recall", "decay"):
            g[f"{m}-{stat.capitalize()}"] = _mean(o[m][stat] for o in objs)
    g["J&F-Mean"] = (g["J-Mean"] + g["F-Mean"]) / 2 if objs else float("nan")
    return {"convention": CONVENTION, "all_frames": all_frames, "global": g, "sequences": results,
            "skipped": skipped}


def _read_gt(path: Path) -> np.ndarray:
    return read_mask(path, what="Ground-truth mask")[0]


def _read_pred(path: Path, shape, gt_path: Path) -> np.ndarray:
    if not path.is_file():
        raise CoordGANError(f"Prediction {path} is missing (the ground truth has {gt_path.name}).")
    labels = read_mask(path, what="Predicted mask")[0]
    if labels.shape != tuple(shape):
        raise CoordGANError(f"Prediction {path} is {labels.shape[1]}x{labels.shape[0]} but the ground truth "
                            f"{gt_path} is {shape[1]}x{shape[0]}.")
    return labels


def _mean(values) -> float:
    values = [v for v in values if v == v]  # drop NaN
    return float(np.mean(values)) if values else float("nan")
