"""Synthetic faces: determinism, labels aligned with pixels, smooth sequences, palette PNG folders."""

import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from coordgan.data import synthetic_faces as sf
from coordgan.data.synthetic_dataset import SyntheticFaces, write_image_folder
from coordgan.data.synthetic_faces import (
    PALETTE,
    PART_NAMES,
    face_coordinates,
    face_params,
    make_images,
    make_sequence,
    render,
    sample_params,
)
from runtime.errors import CoordGANError


def interior(labels: np.ndarray, part: int) -> np.ndarray:
    """Pixels of `part` whose 4 neighbours are `part` too: free of anti-aliased edges."""
    m = labels == part
    e = m.copy()
    e[1:] &= m[:-1]
    e[:-1] &= m[1:]
    e[:, 1:] &= m[:, :-1]
    e[:, :-1] &= m[:, 1:]
    e[[0, -1]] = False
    e[:, [0, -1]] = False
    return e


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / max((a | b).sum(), 1)


def test_part_names_and_palette():
    assert PART_NAMES == ("background", "skin", "ears", "eyes", "brows", "nose", "mouth", "hair")
    assert len(PALETTE) == 768 and all(0 <= v <= 255 for v in PALETTE)
    assert PALETTE[:3] == [0, 0, 0]
    assert PALETTE[3:9] == [128, 0, 0, 0, 128, 0]  # DAVIS / VOC colormap
    assert len({tuple(PALETTE[3 * i : 3 * i + 3]) for i in range(len(PART_NAMES))}) == len(PART_NAMES)


def test_importable_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from coordgan.data import make_images\n"
        "im, lab = make_images(1, 32, 0); assert im.shape == (1, 32, 32, 3)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_same_seed_same_arrays_different_seed_different():
    a_im, a_lab = make_images(3, 64, seed=5)
    b_im, b_lab = make_images(3, 64, seed=5)
    c_im, c_lab = make_images(3, 64, seed=6)
    assert a_im.dtype == np.uint8 and a_lab.dtype == np.uint8
    assert a_im.shape == (3, 64, 64, 3) and a_lab.shape == (3, 64, 64)
    np.testing.assert_array_equal(a_im, b_im)
    np.testing.assert_array_equal(a_lab, b_lab)
    assert not np.array_equal(a_im, c_im)
    assert not np.array_equal(a_lab, c_lab)
    # faces within one batch differ from each other too
    assert not np.array_equal(a_im[0], a_im[1])


def test_image_i_independent_of_n():
    im3, lab3 = make_images(3, 48, seed=1)
    im7, lab7 = make_images(7, 48, seed=1)
    np.testing.assert_array_equal(im3, im7[:3])
    np.testing.assert_array_equal(lab3, lab7[:3])
    im0, lab0 = make_images(0, 48, seed=1)
    assert im0.shape == (0, 48, 48, 3) and lab0.shape == (0, 48, 48)


def test_dataset_matches_make_images():
    ds = SyntheticFaces(64, seed=2, length=5)
    assert len(ds) == 5
    im, lab = make_images(5, 64, seed=2)
    for i in (0, 3):
        np.testing.assert_array_equal(ds[i][0], im[i])
        np.testing.assert_array_equal(ds[i][1], lab[i])
    np.testing.assert_array_equal(ds[-1][0], im[4])
    np.testing.assert_array_equal(ds[np.int64(1)][1], lab[1])
    with pytest.raises(IndexError):
        ds[5]
    with pytest.raises(IndexError):
        ds[-6]
    assert ds.params(2) == face_params(2, 2)
    assert [x[0].shape for x in ds] == [(64, 64, 3)] * 5  # iteration stops at the end


def test_params_are_frozen_and_hashable():
    p = sample_params(np.random.default_rng(0))
    assert p == sample_params(np.random.default_rng(0))
    hash(p)
    with pytest.raises(AttributeError):
        p.scale = 1.0  # type: ignore[misc]
    assert p.part_colors().shape == (len(PART_NAMES), 3)


@pytest.mark.parametrize("size", [16, 32, 128, 200])
def test_sizes(size):
    im, lab = render(face_params(0, 0), size)
    assert im.shape == (size, size, 3) and lab.shape == (size, size)
    assert im.dtype == np.uint8 and lab.dtype == np.uint8
    assert lab.max() < len(PART_NAMES)
    assert (lab == 1).any() and (lab == 0).any()


def test_sizes_agree_on_layout():
    # the same face at two resolutions: the small label map is the big one, subsampled
    _, big = render(face_params(4, 0), 128)
    _, small = render(face_params(4, 0), 32)
    assert (big[2::4, 2::4] == small).mean() > 0.93


def test_bad_arguments_raise_project_error():
    p = face_params(0, 0)
    for bad in (0, -3, 2.5, "64"):
        with pytest.raises(CoordGANError):
            render(p, bad)
    with pytest.raises(CoordGANError):
        make_images(-1, 32, 0)
    with pytest.raises(CoordGANError):
        SyntheticFaces(32, 0, length=-1)


def test_every_face_part_present():
    _, labels = make_images(6, 128, seed=3)
    for lab in labels:
        for part in range(1, 7):  # skin .. mouth in every face; hair is optional (bald faces)
            assert (lab == part).sum() >= 4, (PART_NAMES[part], np.bincount(lab.ravel(), minlength=8))
    assert (labels == 7).any()
    # eyes come in pairs: two separate blobs, one either side of the nose
    for lab in labels:
        cols = np.nonzero((lab == 3).any(0))[0]
        assert np.diff(cols).max() > 2


def test_labels_aligned_with_colors():
    """Inside each part region, pixels are that part's color times a smooth shading factor."""
    for i in range(8):
        p = face_params(11, i)
        im, lab = render(p, 128)
        img = im.astype(np.float64) / 255
        colors = p.part_colors().astype(np.float64)
        means = {}
        for part in range(1, len(PART_NAMES)):
            e = interior(lab, part)
            if e.sum() < 3:
                continue
            px, c = img[e], colors[part]
            s = px @ c / (c @ c)  # best shading factor per pixel
            resid = np.linalg.norm(px - s[:, None] * c, axis=1)
            assert np.quantile(resid, 0.95) < 0.04, (i, PART_NAMES[part])
            assert 0.75 < np.median(s) < 1.25, (i, PART_NAMES[part])
            means[part] = px.mean(0)
        # parts that touch the skin look clearly different from it
        for part in (2, 3, 4, 5, 6, 7):
            if part in means:
                dist = np.linalg.norm(means[part] - means[1]) * 255
                assert dist > 20, (i, PART_NAMES[part], dist)
        # and the face stands out from the background
        bg = img[interior(lab, 0)].mean(0)
        assert np.linalg.norm(bg - means[1]) * 255 > 20


def test_labels_follow_the_image_under_a_different_pose():
    # moving the face moves its label map by the same amount
    from dataclasses import replace

    p = replace(face_params(0, 1), tx=0.0, ty=0.0)
    _, a = render(p, 64)
    _, b = render(replace(p, tx=0.25), 64)  # 0.25 image units = 8 px at 64
    assert (a[:, :-8] == b[:, 8:]).mean() > 0.97


def test_face_coordinates_move_with_the_face_and_name_the_same_parts():
    from dataclasses import replace

    p = replace(face_params(0, 1), tx=0.0, ty=0.0)
    a = face_coordinates(p, 64)
    assert a.shape == (2, 64, 64) and a.dtype == np.float32 and np.abs(a).max() <= 1
    b = face_coordinates(replace(p, tx=0.25), 64)  # 8 px to the right: the same face points, moved
    np.testing.assert_allclose(a[:, :, :-8], b[:, :, 8:], atol=1e-5)
    # one-to-one on the face: neighbouring pixels differ by about a canonical grid step (2 / 64)
    _, lab = render(p, 64)
    step = np.linalg.norm(np.diff(a, axis=2), axis=0)[interior(lab, 1)[:, 1:]]
    assert 0.5 * 2 / 64 < np.median(step) < 2 * 2 / 64
    # another face: its eyes sit near the template point of this face's eyes
    q = face_params(0, 2)
    _, lab_q = render(q, 64)
    eyes_a = a[:, lab == PART_NAMES.index("eyes")].mean(1)
    eyes_q = face_coordinates(q, 64)[:, lab_q == PART_NAMES.index("eyes")].mean(1)
    assert np.abs(eyes_a - eyes_q).max() < 0.1


def test_sequence_smooth_and_moving():
    frames, masks = make_sequence(24, 96, seed=3)
    assert frames.shape == (24, 96, 96, 3) and masks.shape == (24, 96, 96)
    f = frames.astype(np.float32)
    step = np.abs(f[1:] - f[:-1]).mean(axis=(1, 2, 3))
    others, _ = make_images(6, 96, seed=3)
    o = others.astype(np.float32)
    random_pairs = [np.abs(o[i] - o[j]).mean() for i in range(6) for j in range(i + 1, 6)]
    assert step.max() < 0.5 * min(random_pairs)
    for t in range(23):
        assert iou(masks[t] == 1, masks[t + 1] == 1) > 0.85
    # it moves: the last frame is not the first
    assert np.abs(f[-1] - f[0]).mean() > 3 * step.mean()
    assert iou(masks[0] == 1, masks[-1] == 1) < 0.97
    # every frame is a full face
    for m in masks:
        assert all((m == part).any() for part in range(1, 7))


def test_sequence_deterministic_prefix_and_still():
    a, ma = make_sequence(6, 48, seed=9)
    b, mb = make_sequence(10, 48, seed=9)
    np.testing.assert_array_equal(a, b[:6])
    np.testing.assert_array_equal(ma, mb[:6])
    still, _ = make_sequence(4, 48, seed=9, motion=0.0)
    assert all(np.array_equal(still[0], s) for s in still)
    np.testing.assert_array_equal(still[0], a[0])  # motion changes the path, not the start
    more, _ = make_sequence(10, 48, seed=9, motion=2.0)
    assert np.abs(more[-1].astype(int) - more[0]).mean() > np.abs(b[-1].astype(int) - b[0]).mean()


def test_write_image_folder_palette_pngs(tmp_path):
    root = tmp_path / "faces"
    write_image_folder(root, 3, 40, seed=7)
    im, lab = make_images(3, 40, seed=7)
    assert sorted(x.name for x in (root / "images").iterdir()) == ["00000.png", "00001.png", "00002.png"]
    assert sorted(x.name for x in (root / "labels").iterdir()) == ["00000.png", "00001.png", "00002.png"]
    for i in range(3):
        with Image.open(root / "images" / f"{i:05d}.png") as x:
            assert x.mode == "RGB"
            np.testing.assert_array_equal(np.asarray(x), im[i])
        with Image.open(root / "labels" / f"{i:05d}.png") as x:
            assert x.mode == "P"
            assert x.getpalette()[:24] == PALETTE[:24]
            np.testing.assert_array_equal(np.asarray(x), lab[i])
    # rewriting over an existing folder works and leaves no temp files behind
    write_image_folder(root, 2, 40, seed=7)
    assert not [x for x in root.rglob("*") if x.name.startswith(".")]


def test_write_image_folder_bad_root(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CoordGANError):
        write_image_folder(blocker / "sub", 1, 32, seed=0)


def test_colorize():
    lab = np.array([[0, 1], [2, 7]], np.uint8)
    rgb = sf.colorize(lab)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert rgb[0, 1].tolist() == PALETTE[3:6]


def test_render_is_fast():
    # loose bound: the target is well under 50 ms per 128x128 face; this only catches a gross regression
    params = [face_params(0, i) for i in range(10)]
    render(params[0], 128)
    t = time.perf_counter()
    for p in params:
        render(p, 128)
    assert time.perf_counter() - t < 0.5
