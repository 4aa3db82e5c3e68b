"""The DAVIS layout, reference policies, and how `propagate` plans sequences and shards (no model)."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtime.davis import layout as davis
from runtime.errors import CoordGANError
from runtime.io.masks import DAVIS_PALETTE, write_mask
from runtime.propagation.jobs import parse_ref, parse_shard, plan


def make_root(tmp_path, seqs=("dog", "bear", "cat", "eel", "ant"), res="480p", annotated=None):
    root = tmp_path / "DAVIS"
    for seq in seqs:
        frames = root / "JPEGImages" / res / seq
        ann = root / "Annotations" / res / seq
        frames.mkdir(parents=True)
        ann.mkdir(parents=True)
        for t in range(4):
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(frames / f"{t:05d}.jpg")
            if annotated is None or t in annotated:
                write_mask(ann / f"{t:05d}.png", np.zeros((8, 8), np.uint8), DAVIS_PALETTE)
    return root


def test_resolution_choice(tmp_path):
    root = make_root(tmp_path, seqs=("a",), res="Full-Resolution")
    assert davis.resolution(root) == "Full-Resolution"  # the only one
    (root / "JPEGImages" / "480p").mkdir()
    assert davis.resolution(root) == "480p"
    with pytest.raises(CoordGANError, match="has no '1080p' folder"):
        davis.resolution(root, "1080p")


def test_sequences_split_and_selection(tmp_path):
    root = make_root(tmp_path)
    assert davis.sequences(root, "480p") == ["ant", "bear", "cat", "dog", "eel"]
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("dog\ncat\n")
    assert davis.sequences(root, "480p", split="val") == ["cat", "dog"]
    assert davis.sequences(root, "480p", only=["eel"]) == ["eel"]
    with pytest.raises(CoordGANError, match="Sequence 'yak' is not under"):
        davis.sequences(root, "480p", only=["yak"])
    with pytest.raises(CoordGANError, match="no test.txt"):
        davis.sequences(root, "480p", split="test")


def test_reference_policies(tmp_path):
    full = make_root(tmp_path / "full", seqs=("a",))
    sparse = make_root(tmp_path / "sparse", seqs=("a",), annotated=(0, 2))
    names = lambda files: [p.stem for p in files]  # noqa: E731
    assert names(davis.reference_files(full, "480p", "a", "auto")) == ["00000"]  # ground truth: first only
    assert names(davis.reference_files(full, "480p", "a", "all")) == ["00000", "00001", "00002", "00003"]
    assert names(davis.reference_files(sparse, "480p", "a", "auto")) == ["00000", "00002"]
    assert names(davis.reference_files(sparse, "480p", "a", "first")) == ["00000"]
    with pytest.raises(CoordGANError, match="--ref-frames must be one of"):
        davis.reference_files(full, "480p", "a", "some")
    for p in (full / "Annotations" / "480p" / "a").iterdir():
        p.unlink()
    with pytest.raises(CoordGANError, match="Sequence 'a' has no annotations"):
        davis.reference_files(full, "480p", "a")


def test_shards_split_sorted_sequences_deterministically(tmp_path):
    root = make_root(tmp_path)
    shards = [[j.name for j in plan(root, tmp_path / "out", shard=f"{i}/2")] for i in range(2)]
    assert shards == [["ant", "cat", "eel"], ["bear", "dog"]]
    jobs = plan(root, tmp_path / "out", seqs=["cat", "ant"], overlay=tmp_path / "ov.mp4")
    assert [j.out_dir for j in jobs] == [tmp_path / "out" / "ant", tmp_path / "out" / "cat"]
    assert jobs[1].overlay == tmp_path / "ov_cat.mp4" and jobs[1].refs[0][0] == "00000"
    assert plan(root, tmp_path / "out", seqs=["cat"], overlay=tmp_path / "ov.mp4")[0].overlay == tmp_path / "ov.mp4"


def test_single_inputs_and_option_parsing(tmp_path):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")
    (job,) = plan(video, tmp_path / "out", refs=["m.png", "00010=late.png"])
    assert job.name == "clip" and job.out_dir == tmp_path / "out"
    assert job.refs == ((0, Path("m.png")), ("00010", Path("late.png")))
    assert plan(video, tmp_path / "out", refs=["m.png"], shard="1/2") == []
    assert parse_shard(None) == (0, 1) and parse_shard("3/4") == (3, 4)
    odd = tmp_path / "a=b.png"
    odd.write_bytes(b"")
    assert parse_ref(str(odd)) == (0, odd)  # an existing file with '=' in its name is a path
    for bad in ("x", "1/0", "-1/2", "4/4"):
        with pytest.raises(CoordGANError, match="--shard"):
            parse_shard(bad)
    with pytest.raises(CoordGANError, match="--seq, --split and --ref-frames apply to a DAVIS root"):
        plan(video, tmp_path / "out", refs=["m.png"], seqs=["a"])
    with pytest.raises(CoordGANError, match="--seq, --split and --ref-frames apply to a DAVIS root"):
        plan(video, tmp_path / "out", refs=["m.png"], ref_frames="all")
    with pytest.raises(CoordGANError, match="--ref-frames must be one of auto, first, all, not 'bogus'"):
        plan(video, tmp_path / "out", refs=["m.png"], ref_frames="bogus")
    with pytest.raises(CoordGANError, match="Input .* does not exist"):
        plan(tmp_path / "nothing", tmp_path / "out", refs=["m.png"])
