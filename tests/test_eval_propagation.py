"""Label-propagation evaluation: hand-built cases with known IoU, the data loaders, the CLI end to end."""

import dataclasses
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from coordgan import evaluation as ev
from coordgan.checkpoint import save
from coordgan.config import PRESETS
from coordgan.correspondence import canonical_grid
from coordgan.data import write_image_folder
from coordgan.models import build
from runtime.errors import CoordGANError

TINY = PRESETS["tiny"]


def square(size, top, left, side, cls=1):
    lab = np.zeros((size, size), np.int64)
    lab[top:top + side, left:left + side] = cls
    return lab


def marked(labels, shifts):
    """LabelledImages whose images carry their horizontal shift (pixels) in every pixel value."""
    labels = np.stack(labels)
    images = np.repeat((10 * np.asarray(shifts, np.uint8))[:, None, None, None], 3, axis=3)
    images = np.broadcast_to(images, labels.shape + (3,)).copy()
    return ev.LabelledImages(images, labels, [f"{i}.png" for i in range(len(labels))])


def shift_corr(images):
    """Correspondence that undoes a horizontal shift read from the image: exact alignment."""
    n, _, h, w = images.shape
    shifts = torch.round((images[:, 0, 0, 0] + 1) * 127.5 / 10).long()
    grid = canonical_grid(h, w)
    out = []
    for s in shifts.tolist():
        cols = (torch.arange(w) - s).clamp(0, w - 1)
        out.append(grid[:, :, cols])
    return torch.stack(out)


# ---------------------------------------------------------------- metric on hand-built cases


def test_accumulator_sums_over_queries_and_excludes():
    acc = ev.IoUAccumulator(3, ignore_index=None)
    gt1 = np.array([[0, 1, 1, 2]])
    pr1 = np.array([[0, 1, 2, 2]])
    gt2 = np.array([[1, 1, 1, 1]])
    pr2 = np.array([[1, 0, 0, 0]])
    acc.update(pr1, gt1)
    acc.update(pr2, gt2)
    # class 0: inter 1, union 1+3-... : pred0 = 1+3, gt0 = 1, inter 1 -> union 4
    # class 1: inter 1+1, pred1 1+1, gt1 2+4 -> union 2+6-2 = 6
    # class 2: inter 1, pred2 2, gt2 1 -> union 2
    assert acc.inter.tolist() == [1, 2, 1]
    assert acc.union.tolist() == [4, 6, 2]
    np.testing.assert_allclose(acc.iou(), [1 / 4, 2 / 6, 1 / 2])
    assert acc.miou(exclude=(0,)) == pytest.approx((2 / 6 + 1 / 2) / 2)
    assert acc.miou(exclude=()) == pytest.approx((1 / 4 + 2 / 6 + 1 / 2) / 3)
    assert acc.miou(exclude=(0, 2)) == pytest.approx(2 / 6)
    # accumulated, not averaged per query: query 2 alone would give class 1 IoU 1/4, query 1 alone 1/2
    assert acc.iou()[1] != pytest.approx((1 / 2 + 1 / 4) / 2)


def test_ignore_index_follows_published_inter_and_union():
    # published: predictions where the ground truth is background are dropped, classes 1.. scored
    acc = ev.IoUAccumulator(3, ignore_index=0)
    gt = np.array([[0, 0, 1, 1, 2]])
    pr = np.array([[1, 2, 1, 2, 2]])
    acc.update(pr, gt)
    assert acc.inter.tolist() == [0, 1, 1]
    assert acc.union.tolist() == [0, 2, 2]  # the two false positives on background do not count
    iou = acc.iou()
    assert math.isnan(iou[0]) and iou[1] == 0.5 and iou[2] == 0.5
    assert acc.miou(exclude=()) == 0.5  # an empty union has no IoU and stays out of the mean


def test_identity_maps_equal_identity_baseline_exactly():
    data = ev.synthetic_faces(9, 32, seed=3)
    refs, queries = ev.split_refs(data, num_refs=3)
    res = ev.evaluate(ev.identity_corr, refs, queries, batch=4, keep_examples=len(queries))
    for r, row in enumerate(res.per_ref):
        np.testing.assert_array_equal(row["iou"], row["identity_iou"])
        for j, pred in enumerate(res.examples["pred"][r]):
            np.testing.assert_array_equal(pred, refs.labels[r])  # the reference labels, pixel for pixel
    assert res.miou == res.identity_miou
    assert 0 < res.miou < 1
    assert res.class_iou[0] is None  # background excluded from the mean by default
    assert res.class_names[1] == "skin"


def test_ground_truth_maps_are_the_ceiling_and_evaluate_maps_agrees():
    data = ev.synthetic_faces(12, 32, seed=3)
    refs, queries = ev.split_refs(data, num_refs=3)
    assert data.coords.shape == (12, 2, 32, 32) and queries.coords.shape == (9, 2, 32, 32)
    ceiling = ev.ground_truth(refs, queries)
    assert ceiling.miou > ceiling.identity_miou + 0.1  # knowing the true correspondence pays
    skin = ceiling.class_names.index("skin")
    assert ceiling.class_iou[skin] > ceiling.identity_class_iou[skin]
    ident = ev.evaluate(ev.identity_corr, refs, queries)
    grid = ev.identity_corr(torch.zeros(1, 3, 32, 32))
    via_maps = ev.evaluate_maps(grid.expand(3, -1, -1, -1), grid.expand(9, -1, -1, -1).numpy(), refs, queries)
    assert via_maps.to_json() == ident.to_json()
    assert ev.ground_truth(refs.subset([0]), dataclasses.replace(queries, coords=None)) is None
    with pytest.raises(CoordGANError, match="query maps must be"):
        ev.evaluate_maps(grid.expand(3, -1, -1, -1), grid.expand(8, -1, -1, -1), refs, queries)


def test_match_error_counts_pixels_off_the_true_match():
    data = marked([square(16, 4, 4, 8), square(16, 4, 6, 8)], [0, 2])  # the query: shifted right by 2
    refs, queries = ev.split_refs(data, num_refs=1)
    true = shift_corr(ev.to_tensor(data.images))  # the shift-undoing maps are the true correspondence
    grid = canonical_grid(16, 16).unsqueeze(0)
    assert ev.match_error({"identity": (grid, grid)}, refs, queries) is None  # no ground truth known
    refs.coords, queries.coords = true[:1].numpy(), true[1:].numpy()
    errors = ev.match_error({"identity": (grid, grid), "true": (true[:1], true[1:])}, refs, queries)
    assert errors["true"] == 0
    # identity matches every scored (square) pixel 2 px off
    assert errors["identity"] == pytest.approx(2.0)
    # every pixel scored: the two left columns' true match is clamped to column 0, so they are 0 and 1 px off
    every = ev.match_error({"identity": (grid, grid)}, refs, queries, ignore_index=None)
    assert every["identity"] == pytest.approx((14 * 2 + 0 + 1) / 16)


def test_query_equal_to_reference_scores_one():
    lab = square(16, 4, 4, 8, cls=1) + square(16, 1, 1, 2, cls=2)
    data = marked([lab, lab, lab], [0, 0, 0])
    refs, queries = ev.split_refs(data, num_refs=1)
    res = ev.evaluate(ev.identity_corr, refs, queries)
    assert res.miou == 1.0 and res.identity_miou == 1.0
    assert res.class_iou == [None, 1.0, 1.0]


@pytest.mark.parametrize("ignore, expected", [(None, 48 / 80), (0, 48 / 64)])
def test_shifted_square_known_iou(ignore, expected):
    ref = square(16, 4, 4, 8)
    query = square(16, 4, 6, 8)  # shifted right by 2: 8 x 6 = 48 pixels overlap
    data = marked([ref, query], [0, 2])
    refs, queries = ev.split_refs(data, num_refs=1)
    ident = ev.evaluate(ev.identity_corr, refs, queries, ignore_index=ignore)
    assert ident.miou == pytest.approx(expected)
    assert ident.identity_miou == pytest.approx(expected)
    aligned = ev.evaluate(shift_corr, refs, queries, ignore_index=ignore)  # maps that know the shift
    assert aligned.miou == pytest.approx(1.0)
    assert aligned.identity_miou == pytest.approx(expected)
    np.testing.assert_array_equal(aligned.examples["pred"][0][0], query)


def test_average_over_references_and_batch_independence():
    base = square(16, 4, 4, 8)
    data = marked([base, square(16, 4, 5, 8), base, square(16, 4, 6, 8)], [0, 1, 0, 2])
    refs, queries = ev.split_refs(data, refs=["0.png", "1"])
    assert refs.names == ["0.png", "1.png"] and queries.names == ["2.png", "3.png"]
    a = ev.evaluate(ev.identity_corr, refs, queries, batch=1, ignore_index=None)
    b = ev.evaluate(ev.identity_corr, refs, queries, batch=5, ignore_index=None)
    assert a.to_json() == b.to_json()
    # ref 0: queries 2 (same) and 3 (shift 2): inter 64+48, union 64+80 -> 112/144
    # ref 1 (shift 1): query 2 inter 56 union 72, query 3 inter 56 union 72 -> 112/144
    assert a.per_ref[0]["miou"] == pytest.approx(112 / 144)
    assert a.per_ref[1]["miou"] == pytest.approx(112 / 144)
    assert a.miou == pytest.approx(112 / 144)


def test_bad_inputs_are_one_sentence():
    lab = square(8, 2, 2, 4)
    data = marked([lab, lab], [0, 0])
    with pytest.raises(CoordGANError, match="no query image"):
        ev.split_refs(data, num_refs=2)
    with pytest.raises(CoordGANError, match="not among the images"):
        ev.split_refs(data, refs=["nope.png"])
    refs, queries = ev.split_refs(data, num_refs=1)
    with pytest.raises(CoordGANError, match=r"\(N, 2, H, W\)"):
        ev.evaluate(lambda x: x, refs, queries)
    with pytest.raises(CoordGANError, match="outside"):
        ev.evaluate(lambda x: 3 * identity(x), refs, queries)


def identity(x):
    return ev.identity_corr(x)


# ---------------------------------------------------------------- folders


def test_load_folder_resizes_and_reports_bad_files(tmp_path):
    root = tmp_path / "d"
    write_image_folder(root, 4, 32, seed=1)
    data = ev.load_folder(root, 16)
    assert data.images.shape == (4, 16, 16, 3) and data.labels.shape == (4, 16, 16)
    assert data.names == ["00000.png", "00001.png", "00002.png", "00003.png"]
    # a label map at another resolution is resized (nearest) to the model size
    lab = np.asarray(Image.open(root / "labels" / "00001.png"))
    big = Image.fromarray(np.kron(lab, np.ones((2, 2), np.uint8)), mode="L")
    big.save(root / "labels" / "00001.png")
    again = ev.load_folder(root, 16)
    np.testing.assert_array_equal(again.labels[1], data.labels[1])
    assert set(np.unique(again.labels)) <= set(range(8))
    Image.fromarray(lab[:8], mode="L").save(root / "labels" / "00003.png")  # 32x8: not these images' shape
    with pytest.raises(CoordGANError, match=r"00003.png is 32x8 but image 00003.png is 32x32 \(upright.*a different aspect"):
        ev.load_folder(root, 16)
    Image.fromarray(lab, mode="L").save(root / "labels" / "00003.png")
    # a photo stored 32x16 with EXIF "rotate 90": upright it is 16x32, and the message gives that size
    photos = tmp_path / "photos"
    (photos / "images").mkdir(parents=True)
    (photos / "labels").mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    Image.fromarray(np.zeros((16, 32, 3), np.uint8)).save(photos / "images" / "p.jpg", exif=exif)
    Image.fromarray(np.zeros((16, 32), np.uint8), mode="L").save(photos / "labels" / "p.png")
    with pytest.raises(CoordGANError, match=r"is 32x16 but image p.jpg is 16x32 \(upright, after any EXIF rotation\)"):
        ev.load_folder(photos, 16)

    (root / "images" / "00004.png").write_bytes(b"not a png at all")
    Image.fromarray(np.zeros((32, 32), np.uint8), mode="L").save(root / "labels" / "00004.png")
    with pytest.raises(CoordGANError, match="Image .*00004.png cannot be read as an image"):
        ev.load_folder(root, 16)
    (root / "labels" / "00004.png").unlink()
    with pytest.raises(CoordGANError, match="00004.png has no label map"):
        ev.load_folder(root, 16)
    (root / "images" / "00004.png").unlink()
    Image.new("RGB", (32, 32)).save(root / "labels" / "00002.png")
    with pytest.raises(CoordGANError, match="palette or grayscale"):
        ev.load_folder(root, 16)
    with pytest.raises(CoordGANError, match="images/ and labels/"):
        ev.load_folder(tmp_path, 16)


# ---------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ck")
    torch.manual_seed(0)
    nets = build(TINY, which=("g", "e"))
    full = save(d / "tiny.safetensors", TINY, nets)
    no_enc = save(d / "gen.safetensors", TINY, {"g": nets["g"]})
    return full, no_enc


def run_cli(*args):
    code = "import sys; sys.argv = ['coordgan', *sys.argv[1:]]\nfrom coordgan.cli import main\nmain()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)


def test_cli_end_to_end_synthetic(ckpts, tmp_path):
    full, _ = ckpts
    out, vis = tmp_path / "r.json", tmp_path / "v.png"
    result = run_cli("eval-propagation", str(full), "--data", "synthetic-faces", "--n", "9", "--seed", "2",
                     "--max-queries", "3", "--batch", "2", "--json", str(out), "--vis", str(vis), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "identity baseline" in result.stdout and "ground-truth correspondence" in result.stdout
    record = json.loads(out.read_text())
    assert record["ground_truth_miou"] > record["identity_miou"]
    assert record["match_error_px"] >= 0 and record["identity_match_error_px"] > 0
    assert len(record["references"]) == 5 and record["num_queries"] == 3
    assert math.isfinite(record["miou"]) and math.isfinite(record["identity_miou"])
    assert record["tau"] == 0.01 and record["exclude"] == [0] and record["ignore_index"] == 0
    assert record["class_iou"]["background"] is None and record["preset"] == "tiny"
    img = Image.open(vis)
    # 2 header rows (queries, ground truth) + 5 references; 2 columns (ref image, labels) + 3 queries
    assert img.mode == "RGB" and img.size == (5 * 98 + 2, 7 * 98 + 2)


def test_cli_errors_are_one_line(ckpts, tmp_path):
    from coordgan.evaluation.run import EvalOptions, parse_ids, run_eval

    full, no_enc = ckpts
    result = run_cli("eval-propagation", str(no_enc), "--data", "synthetic-faces", "--n", "6")
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "no encoder" in result.stderr
    root = tmp_path / "d"
    write_image_folder(root, 3, 16, seed=0)
    (root / "labels" / "00002.png").unlink()
    with pytest.raises(CoordGANError, match="00002.png has no label map"):
        run_eval(full, EvalOptions(data=str(root), device="cpu"))
    with pytest.raises(CoordGANError, match="--exclude"):
        parse_ids("a,b", "--exclude")
    result = run_cli("eval-propagation", str(full), "--data", "synthetic-faces", "--exclude", "a,b")
    assert result.returncode == 1 and "--exclude must be comma-separated class ids" in result.stderr


def test_sparse_lookup_path_agrees_with_the_reference():
    """The CLI's default on CPU (runtime's sparse numpy lookup) gives the reference's labels."""
    import torch as _torch

    from coordgan.correspondence import canonical_grid
    from coordgan.evaluation import propagate

    rng = _torch.Generator().manual_seed(0)
    base = canonical_grid(32, 32)
    queries = (base[None] + 0.03 * _torch.randn(4, 2, 32, 32, generator=rng)).clamp(-1, 1)
    ref_map = (base + 0.03 * _torch.randn(2, 32, 32, generator=rng)).clamp(-1, 1)
    ref_labels = _torch.randint(0, 5, (32, 32), generator=rng)
    want = propagate(queries, ref_map, ref_labels, 5, lookup="reference")
    got = propagate(queries, ref_map, ref_labels, 5, lookup="sparse")
    assert (got == want).float().mean() >= 0.999
    with pytest.raises(CoordGANError, match="--lookup must be one of"):
        propagate(queries, ref_map, ref_labels, 5, lookup="fast")


def test_preset_gives_random_weights_instead_of_a_checkpoint(ckpts, tmp_path):
    """--preset NAME scores a preset's random weights (seeded by --seed), as sample and bench take it;
    exactly one of CKPT and --preset."""
    out = tmp_path / "r.json"
    result = run_cli("eval-propagation", "--preset", "tiny", "--data", "synthetic-faces", "--n", "7",
                     "--max-queries", "2", "--device", "cpu", "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert "weights: preset tiny, random (seed 0)" in result.stdout
    record = json.loads(out.read_text())
    assert record["checkpoint"] is None and record["weights"] == "random (seed 0)" and record["preset"] == "tiny"
    assert math.isfinite(record["miou"]) and record["num_queries"] == 2
    full, _ = ckpts
    for args in ((), (str(full), "--preset", "tiny")):
        result = run_cli("eval-propagation", *args, "--data", "synthetic-faces", "--device", "cpu")
        assert result.returncode == 1 and result.stderr == (
            "Error: Give exactly one of a checkpoint and --preset NAME (random weights).\n"), args
    result = run_cli("eval-propagation", "--preset", "huge", "--data", "synthetic-faces", "--device", "cpu")
    assert result.returncode == 1 and "Unknown preset 'huge'" in result.stderr


@pytest.mark.parametrize("lookup", ["cuda", "cuda-sparse"])
def test_a_kernel_lookup_on_the_cpu_is_refused_in_the_commands_words(ckpts, lookup):
    """--lookup cuda with --device cpu: one sentence naming the options, before the maps are made
    (it was runtime.lookup's 'impl=...' refusal, after them)."""
    from coordgan.evaluation.run import EvalOptions, run_eval

    full, _ = ckpts
    stages = []
    sentence = (f"--lookup {lookup} runs a CUDA kernel, so it needs --device cuda; on the CPU use --lookup sparse, "
                "dense or reference.")
    with pytest.raises(CoordGANError) as refused:
        run_eval(full, EvalOptions(data="synthetic-faces", n=4, device="cpu", lookup=lookup),
                 lambda stage, done, total: stages.append(stage))
    assert str(refused.value) == sentence and stages == []
    base = canonical_grid(8, 8)  # the library function says the same
    with pytest.raises(CoordGANError) as refused:
        ev.propagate(base[None], base, torch.zeros(8, 8, dtype=torch.long), 2, lookup=lookup)
    assert str(refused.value) == sentence
