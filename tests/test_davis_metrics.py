"""DAVIS J and F on hand-built masks with known answers, and `coordgan eval-video` on folders of them."""

import json

import numpy as np
import pytest
from scipy import ndimage

from cli_helpers import run_main
from runtime.davis import metrics as dm
from runtime.davis.evaluate import evaluate, evaluate_sequence
from runtime.errors import CoordGANError
from runtime.io.masks import DAVIS_PALETTE, write_mask


def box(shape, y0, y1, x0, x1):
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def test_j_of_two_squares_is_their_exact_iou():
    a, b = box((100, 100), 10, 30, 10, 30), box((100, 100), 20, 40, 20, 40)  # 400 px each, 100 shared
    assert dm.region_similarity(a, b) == pytest.approx(100 / 700)
    assert dm.region_similarity(a, a) == 1.0
    assert dm.region_similarity(a, np.zeros_like(a)) == 0.0
    empty = np.zeros((10, 10), bool)
    assert dm.region_similarity(empty, empty) == 1.0  # DAVIS: absent in both counts as perfect
    void = box((100, 100), 0, 100, 20, 100)  # ignore x >= 20: b vanishes, a keeps a 20x10 strip
    assert dm.region_similarity(a, b, void) == 0.0
    void = box((100, 100), 0, 100, 25, 100)  # x >= 25: a 300 px, b 100 px, 50 shared
    assert dm.region_similarity(a, b, void) == pytest.approx(50 / 350)


def test_identical_masks_score_one_and_empty_ones_follow_davis():
    a = box((60, 80), 10, 40, 20, 50)
    assert dm.boundary_f(a, a) == 1.0 and dm.region_similarity(a, a) == 1.0
    empty = np.zeros_like(a)
    assert dm.boundary_measure(empty, empty) == (1.0, 1.0, 1.0)
    assert dm.boundary_measure(empty, a) == (0.0, 1.0, 0.0)
    assert dm.boundary_measure(a, empty) == (0.0, 0.0, 1.0)


def test_boundary_map_is_davis_seg2bmap():
    stripe = box((100, 100), 0, 50, 0, 100)
    b = dm.boundary_map(stripe)
    assert np.array_equal(np.argwhere(b)[:, 0], np.full(100, 49))  # exactly row 49, all 100 columns
    square = box((10, 10), 2, 6, 3, 7)
    expected = np.zeros((10, 10), bool)
    expected[1, 2:7] = True  # the row above the square: seg ^ s (x 3..6) and seg ^ se (x 2..5)
    assert dm.boundary_map(square)[1].tolist() == expected[1].tolist()


@pytest.mark.parametrize("shift, f", [(0, 1.0), (1, 1.0), (2, 1.0), (3, 0.0), (5, 0.0)])
def test_shifted_boundary_within_and_beyond_tolerance(shift, f):
    """100x100: tolerance ceil(0.008 * 141.4) = 2 px; a horizontal edge moved by `shift` rows."""
    assert dm.tolerance((100, 100)) == 2
    gt, pred = box((100, 100), 0, 50, 0, 100), box((100, 100), 0, 50 + shift, 0, 100)
    assert dm.boundary_f(pred, gt) == f
    assert dm.region_similarity(pred, gt) == pytest.approx(50 / (50 + shift))


def test_tolerance_at_davis_resolution_and_explicit_pixels():
    assert dm.tolerance((480, 854)) == 8  # ceil(0.008 * 979.6)
    assert dm.tolerance((480, 854), bound_th=3) == 3


def test_distance_dilation_equals_disk_dilation():
    rng = np.random.default_rng(0)
    pts = rng.random((64, 90)) > 0.995
    for r in (1, 2, 5, 8):
        y, x = np.ogrid[-r:r + 1, -r:r + 1]
        disk = x * x + y * y <= r * r  # skimage.morphology.disk(r)
        assert np.array_equal(dm.dilate(pts, r), ndimage.binary_dilation(pts, structure=disk))
    assert not dm.dilate(np.zeros((5, 5), bool), 3).any()


def test_statistics_mean_recall_decay():
    s = dm.statistics([1.0, 1.0, 0.0, 0.0])
    assert s == {"mean": 0.5, "recall": 0.5, "decay": 1.0}
    assert dm.statistics([0.6] * 10)["decay"] == 0.0


# ---------------------------------------------------------------- folders and the CLI

SIZE = (100, 100)


def gt_frames():
    """4 frames: object 1 a square, object 2 a stripe, object 3 only in the last frame."""
    out = []
    for t in range(4):
        m = np.zeros(SIZE, np.uint8)
        m[10:30, 10:30] = 1
        m[70:80, :] = 2
        if t == 3:
            m[40:50, 60:70] = 3
        out.append(m)
    return out


def write_seq(folder, frames):
    folder.mkdir(parents=True, exist_ok=True)
    for t, m in enumerate(frames):
        write_mask(folder / f"{t:05d}.png", m, DAVIS_PALETTE)


@pytest.fixture()
def folders(tmp_path):
    gt = gt_frames()
    pred = [m.copy() for m in gt]
    pred[1][pred[1] == 1] = 0
    pred[1][20:40, 20:40] = 1  # the square moved: J = 1/7 in frame 1
    pred[3][pred[3] == 3] = 0  # object 3 missed in the last frame
    write_seq(tmp_path / "gt" / "seq", gt)
    write_seq(tmp_path / "pred" / "seq", pred)
    return tmp_path


def test_sequence_scores_skip_first_and_last_like_davis(folders):
    r = evaluate_sequence(folders / "pred" / "seq", folders / "gt" / "seq")
    assert r["frames"] == ["00001", "00002"]
    assert r["objects"]["1"]["J_per_frame"] == pytest.approx([1 / 7, 1.0])
    assert r["objects"]["2"]["J"]["mean"] == 1.0 and r["objects"]["2"]["F"]["mean"] == 1.0
    assert r["objects"]["3"]["J_per_frame"] == [1.0, 1.0]  # absent from both: J = 1
    full = evaluate_sequence(folders / "pred" / "seq", folders / "gt" / "seq", all_frames=True)
    assert full["objects"]["1"]["J"]["mean"] == pytest.approx((3 + 1 / 7) / 4)
    assert full["objects"]["3"]["J_per_frame"] == [1.0, 1.0, 1.0, 0.0]
    assert full["objects"]["3"]["F_per_frame"][-1] == 0.0


def test_void_pixels_are_ignored(tmp_path):
    gt = [np.where(box(SIZE, 0, 100, 50, 100), 255, m).astype(np.uint8) for m in gt_frames()[:2]]
    pred = [m.copy() for m in gt_frames()[:2]]
    pred[0][70:80, 50:] = 0  # wrong only under the void
    write_seq(tmp_path / "gt", gt)
    write_seq(tmp_path / "pred", pred)
    r = evaluate_sequence(tmp_path / "pred", tmp_path / "gt", all_frames=True)
    assert r["objects"]["2"]["J_per_frame"] == [1.0, 1.0] and r["objects"]["2"]["F_per_frame"] == [1.0, 1.0]


@pytest.mark.parametrize("under_void", [0, 1, 2])
def test_void_is_neither_an_object_nor_background(tmp_path, under_void):
    """DAVIS: ground-truth 255 is void. Whatever a prediction says there (background, one object or
    another) scores nothing, and 255 is not an object of the sequence."""
    void = box(SIZE, 0, 100, 50, 100)
    gt = [np.where(void, 255, m).astype(np.uint8) for m in gt_frames()[:2]]
    pred = [np.where(void, under_void, m).astype(np.uint8) for m in gt_frames()[:2]]
    write_seq(tmp_path / "gt", gt)
    write_seq(tmp_path / "pred", pred)
    r = evaluate_sequence(tmp_path / "pred", tmp_path / "gt", all_frames=True)
    assert sorted(r["objects"]) == ["1", "2"]
    for scores in r["objects"].values():
        assert scores["J_per_frame"] == [1.0, 1.0] and scores["F_per_frame"] == [1.0, 1.0]

def test_dataset_layout_and_global_means(folders):
    root = folders / "davis"
    write_seq(root / "Annotations" / "480p" / "a", gt_frames())
    write_seq(root / "Annotations" / "480p" / "b", gt_frames())
    write_seq(folders / "out" / "a", gt_frames())
    bad = gt_frames()
    for m in bad:
        m[m == 2] = 0
    write_seq(folders / "out" / "b", bad)
    result = evaluate(folders / "out", root)
    assert sorted(result["sequences"]) == ["a", "b"]
    g = result["global"]
    assert g["J-Mean"] == pytest.approx(5 / 6)  # 6 (sequence, object) pairs, one of them 0
    assert g["J&F-Mean"] == pytest.approx((g["J-Mean"] + g["F-Mean"]) / 2)
    assert evaluate(folders / "out", root, resolution="480p")["global"] == g
    with pytest.raises(CoordGANError, match="Annotations has no '1080p' folder \\(it has: 480p\\)"):
        evaluate(folders / "out", root, resolution="1080p")


def test_one_folder_each_side_is_named_after_the_results(tmp_path):
    """`eval-video masks/ gt/` named the sequence "gt": the ground truth's folder, not the results'."""
    write_seq(tmp_path / "gt", gt_frames())
    write_seq(tmp_path / "bear-masks", gt_frames())
    assert list(evaluate(tmp_path / "bear-masks", tmp_path / "gt")["sequences"]) == ["bear-masks"]
    write_seq(tmp_path / "out" / "gt", gt_frames())  # PRED/<seq>/ as `propagate` writes a dataset
    assert list(evaluate(tmp_path / "out", tmp_path / "gt")["sequences"]) == ["gt"]

def test_missing_or_mismatched_predictions_are_errors(folders):
    (folders / "pred" / "seq" / "00002.png").unlink()
    with pytest.raises(CoordGANError, match="Prediction .*00002.png is missing"):
        evaluate(folders / "pred", folders / "gt" / "seq")
    write_mask(folders / "pred" / "seq" / "00002.png", np.zeros((50, 50), np.uint8), DAVIS_PALETTE)
    with pytest.raises(CoordGANError, match="is 50x50 but the ground truth"):
        evaluate(folders / "pred", folders / "gt" / "seq")
    (folders / "empty").mkdir()
    with pytest.raises(CoordGANError, match="Predictions for sequence 'seq' are missing"):
        evaluate(folders / "empty", folders / "gt")


def test_eval_video_cli_table_and_json(folders, monkeypatch, capsys):
    code, out, err = run_main(monkeypatch, capsys, "eval-video", folders / "pred", folders / "gt", "--json")
    assert code == 0, err
    record = json.loads(out)
    assert record["sequences"]["seq"]["objects"]["1"]["J_per_frame"] == pytest.approx([1 / 7, 1.0])
    assert "1 where neither mask holds the object" in record["convention"]
    code, out, err = run_main(monkeypatch, capsys, "eval-video", folders / "pred", folders / "gt")
    assert code == 0 and "J&F-Mean" in out and "seq" in out
    code, out, err = run_main(monkeypatch, capsys, "eval-video", folders / "nothing", folders / "gt")
    assert code == 1 and err.startswith("Error: Predictions") and "Traceback" not in err


def test_a_ground_truth_too_short_to_score_says_so(tmp_path, monkeypatch, capsys):
    """One or two frames: DAVIS leaves out the first and the last, so nothing is scored (no perfect J and F)."""
    for n in (1, 2):
        gt = gt_frames()[:n]
        write_seq(tmp_path / f"gt{n}" / "seq", gt)
        write_seq(tmp_path / f"pred{n}" / "seq", gt)
        code, _, err = run_main(monkeypatch, capsys, "eval-video", tmp_path / f"pred{n}", tmp_path / f"gt{n}")
        assert code == 1 and f"has {n} frame(s)" in err and "no frame is left to score" in err
        assert err.count("\n") == 1
        code, out, err = run_main(monkeypatch, capsys, "eval-video", tmp_path / f"pred{n}", tmp_path / f"gt{n}",
                                  "--all-frames", "--json")
        assert code == 0 and json.loads(out)["sequences"]["seq"]["frames"] == [f"{t:05d}" for t in range(n)]
