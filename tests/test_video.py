"""runtime.io.video and runtime.io.masks: streaming frame sources, the overlay writer, label PNG I/O.

Real PyAV encoders and decoders and real PNG files; the synthetic faces give the frames.
"""

import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from coordgan.data.synthetic_faces import PALETTE, make_sequence
from runtime.errors import CoordGANError
from runtime.io import masks, video
from runtime.io.images import read_image
from runtime.io.masks import DAVIS_PALETTE, write_mask
from mask_helpers import png_with_short_palette
from runtime.io.video import ArrayFrames, FolderFrames, VideoFrames, VideoWriter, natural_key, open_frames, pick_codec


def write_video(path, frames, fps=10, codec="mpeg4", options=None):
    """Plain PyAV, independent of runtime.io.video: the test's own encoder."""
    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 4_000_000
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


@pytest.fixture(scope="module")
def sequence():
    return make_sequence(6, 48, seed=3)


def test_video_streams_frames_named_by_index(tmp_path, sequence):
    frames, _ = sequence
    path = tmp_path / "clip.mp4"
    write_video(path, frames)
    source = open_frames(path)
    assert isinstance(source, VideoFrames) and source.count == 6 and source.fps == pytest.approx(10)
    got = list(source.frames())
    assert [(i, n) for i, n, _ in got] == [(i, f"{i:05d}") for i in range(6)]
    for (_, _, frame), original in zip(got, frames):
        assert frame.shape == (48, 48, 3) and frame.dtype == np.uint8
        assert np.abs(frame.astype(int) - original).mean() < 8  # lossy, but the same picture
    tail = list(source.frames(start=4))
    assert [i for i, _, _ in tail] == [4, 5] and np.array_equal(tail[0][2], got[4][2])
    assert source.resolve("00003") == 3 and source.resolve("3") == 3
    with pytest.raises(CoordGANError, match="beyond the last frame"):
        source.resolve("00009")


def test_corrupt_and_empty_videos_are_one_sentence_errors(tmp_path, sequence):
    good = tmp_path / "good.mp4"
    write_video(good, sequence[0])
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x01 this is not a video" * 50)
    with pytest.raises(CoordGANError, match="cannot be read.*damaged or not a video"):
        list(open_frames(junk).frames())
    truncated = tmp_path / "truncated.mp4"
    data = good.read_bytes()
    truncated.write_bytes(data[: len(data) // 3])  # the moov atom (index) at the end is gone
    with pytest.raises(CoordGANError, match="truncated.mp4"):
        list(open_frames(truncated).frames())
    # index first (-movflags faststart), then cut off: the frames decode up to the cut, without an
    # FFmpeg error, so the header's frame count is what shows it
    write_video(good, sequence[0], options={"movflags": "faststart"})
    data = good.read_bytes()
    truncated.write_bytes(data[: len(data) * 2 // 3])
    source = open_frames(truncated)
    assert source.count == 6
    with pytest.raises(CoordGANError, match=r"truncated.mp4 ends after frame \d: its index lists 6 frames but the"):
        list(source.frames())
    with pytest.raises(CoordGANError, match="does not exist"):
        open_frames(tmp_path / "missing.mp4")


def test_frame_folder_natural_order_and_errors(tmp_path, sequence):
    frames, _ = sequence
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in (2, 10, 1):
        Image.fromarray(frames[i % 6]).save(folder / f"f_{i}.png")
    (folder / "notes.txt").write_text("ignored")
    source = open_frames(folder)
    assert isinstance(source, FolderFrames) and source.names == ["f_1", "f_2", "f_10"]
    assert source.resolve("f_10.png") == 2 and source.resolve("1") == 1  # no name "1": an index
    assert [n for _, n, _ in source.frames(start=1)] == ["f_2", "f_10"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CoordGANError, match="holds no .jpg or .png frames"):
        open_frames(empty)
    Image.fromarray(frames[0][:40]).save(folder / "f_11.png")
    with pytest.raises(CoordGANError, match="f_11 .* is 48x40 but the sequence's first frame is 48x48"):
        list(open_frames(folder).frames())
    (folder / "f_11.png").write_bytes(b"not a png")
    with pytest.raises(CoordGANError, match="f_11.png cannot be read as an image"):
        list(open_frames(folder).frames())


def test_a_text_file_named_as_an_image_is_named_as_not_an_image(tmp_path, sequence):
    """FFmpeg opens a .png too, so a text file named .png given as the input read "damaged after frame 0"."""
    text = tmp_path / "00001.png"
    text.write_text("these are my notes, not a picture\n" * 20)
    with pytest.raises(CoordGANError, match=r"00001.png cannot be decoded \(.*\); it is not an image file, or a "
                                            r"damaged one\.$"):
        list(open_frames(text).frames())
    Image.fromarray(sequence[0][0]).save(tmp_path / "00000.png")  # in a frame folder: the file is named
    with pytest.raises(CoordGANError, match=r"^Frame .*00001.png cannot be read as an image"):
        list(open_frames(tmp_path).frames())

def test_frame_folder_reads_photos_upright(tmp_path):
    """A JPEG stored landscape with EXIF "rotate 90" (a phone photo) is the portrait frame a viewer shows."""
    folder = tmp_path / "photos"
    folder.mkdir()
    stored = np.zeros((16, 32, 3), np.uint8)
    stored[:, :8] = 255  # a white band on the stored image's left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the viewer rotates 90 degrees clockwise
    Image.fromarray(stored).save(folder / "0.jpg", exif=exif, quality=95)
    (_, _, frame), = open_frames(folder).frames()
    assert frame.shape == (32, 16, 3)
    assert frame[:8].mean() > 200 and frame[12:].mean() < 50  # the left edge is now the top


def test_natural_key_orders_numbers_by_value():
    assert sorted(["a10", "a2", "a1", "b"], key=natural_key) == ["a1", "a2", "a10", "b"]


def test_array_frames_checks_its_input():
    with pytest.raises(CoordGANError, match="no frames"):
        ArrayFrames(np.zeros((0, 4, 4, 3), np.uint8))
    with pytest.raises(CoordGANError, match="uint8 RGB"):
        list(ArrayFrames(np.zeros((1, 4, 4), np.float32)).frames())


def test_video_writer_is_atomic_and_pads_odd_sizes(tmp_path, sequence, monkeypatch):
    frames, _ = sequence
    out = tmp_path / "overlay.mp4"
    with VideoWriter(out, fps=12) as writer:
        for frame in frames[:, :47, :45]:
            writer.write(frame)
        assert not out.exists()  # only the temp file while writing
    assert pick_codec() in ("libx264", "h264", "mpeg4")
    back = open_frames(out)
    assert back.count == 6 and next(back.frames())[2].shape == (48, 46, 3)
    failed = tmp_path / "failed.mp4"
    with pytest.raises(RuntimeError):
        with VideoWriter(failed) as writer:
            writer.write(frames[0])
            raise RuntimeError("interrupted")
    assert list(tmp_path.glob("*failed*")) == []  # neither the target nor its temp file
    for codec in sorted({pick_codec(), "mpeg4"}):  # this FFmpeg's choice and the fallback
        monkeypatch.setattr(video, "pick_codec", lambda: codec)
        for suffix in VideoWriter.WRITABLE:  # every name the writer accepts makes a video it can read back
            named = tmp_path / f"{codec}{suffix}"
            with VideoWriter(named) as writer:
                for frame in frames[:3]:
                    writer.write(frame)
            assert len(list(open_frames(named).frames())) == 3, named
    with pytest.raises(CoordGANError, match="Cannot write the video .*overlay.png: use a .mp4"):
        VideoWriter(tmp_path / "overlay.png")
    with pytest.raises(CoordGANError, match="Cannot write the video /proc/overlay.mp4 .*in a writable folder"):
        VideoWriter("/proc/overlay.mp4")  # unwritable even for root: refused at once, not at the first frame


def decoded(path):
    return np.stack([frame for _, _, frame in open_frames(path).frames()])


@pytest.mark.parametrize("codec", sorted({pick_codec(), "mpeg4"}))
def test_the_same_frames_give_the_same_video_bytes(tmp_path, monkeypatch, codec):
    """The README promises the same overlay bytes on a rerun and after a resume (which rebuilds the
    video from frame 0): every container the writer accepts, this FFmpeg's codec and the fallback.
    Matroska differed always (a date, a random id); x264's macroblock tree, on these frames, in 7 of
    10 writes on one thread, so each container is written 5 times and every write decodes alike."""
    frames = make_sequence(9, 64, seed=2)[0]
    monkeypatch.setattr(video, "pick_codec", lambda: codec)
    pixels = None
    for suffix in VideoWriter.WRITABLE:
        paths = [tmp_path / f"run{k}{suffix}" for k in range(5)]
        for path in paths:
            with VideoWriter(path, fps=25) as writer:
                for frame in frames:
                    writer.write(frame)
        first, *others = (path.read_bytes() for path in paths)
        for other in others:
            assert other == first, f"{codec} {suffix}: writes of the same frames differ"
        for path in paths:
            pixels = decoded(path) if pixels is None else pixels
            assert np.array_equal(decoded(path), pixels), f"{path.name} decodes to other pixels"


WRITE_ON_CPUS = """
import os, sys
import numpy as np
from runtime.io.video import VideoWriter
os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:int(sys.argv[1])])
with VideoWriter(sys.argv[3], fps=24) as writer:
    for frame in np.load(sys.argv[2]):
        writer.write(frame)
"""


@pytest.mark.skipif(len(getattr(os, "sched_getaffinity", lambda _: ())(0)) < 2, reason="needs 2 CPUs to compare")
def test_the_overlay_bytes_do_not_depend_on_the_cores(tmp_path):
    """A threaded encoder splits the work by the core count, so another machine (or x264 with many
    threads, another run) wrote other bytes: up to 37/255 apart once decoded. One CPU against two."""
    np.save(tmp_path / "frames.npy", make_sequence(12, 160, seed=2)[0])
    root = Path(__file__).resolve().parents[1]
    for cpus in (1, 2):
        subprocess.run([sys.executable, "-c", WRITE_ON_CPUS, str(cpus), str(tmp_path / "frames.npy"),
                        str(tmp_path / f"cpus{cpus}.mp4")], cwd=root, check=True)
    assert (tmp_path / "cpus1.mp4").read_bytes() == (tmp_path / "cpus2.mp4").read_bytes()

def test_masks_read_palette_grayscale_binary_and_refuse_bad_ones(tmp_path, sequence):
    _, labels = sequence
    write_mask(tmp_path / "p.png", labels[0], DAVIS_PALETTE)
    got, palette = masks.read_mask(tmp_path / "p.png")
    assert np.array_equal(got, labels[0]) and palette[:24] == bytes(PALETTE[:24])
    Image.fromarray(labels[0]).save(tmp_path / "gray.png")
    got, palette = masks.read_mask(tmp_path / "gray.png")
    assert np.array_equal(got, labels[0]) and palette is None
    Image.fromarray((labels[0] > 0).astype(np.uint8) * 255).save(tmp_path / "binary.png")
    assert set(np.unique(masks.read_mask(tmp_path / "binary.png")[0])) == {0, 1}
    png_with_short_palette(tmp_path / "short.png", np.array([[0, 1], [2, 5]]), 3)
    with pytest.raises(CoordGANError, match="uses label 5 but its palette has only 3 colours"):
        masks.read_mask(tmp_path / "short.png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(CoordGANError, match="is a RGB image; a label mask must be a palette"):
        masks.read_mask(tmp_path / "rgb.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(CoordGANError, match="cannot be read as an image"):
        masks.read_mask(tmp_path / "broken.png")


def test_mask_resize_and_write(tmp_path):
    labels = np.kron(np.array([[0, 1], [2, 3]], np.uint8), np.ones((4, 6), np.uint8))  # 8x12
    big = masks.resize_mask(labels, (16, 24))
    assert np.array_equal(big, np.kron(labels, np.ones((2, 2), np.uint8)))
    with pytest.raises(CoordGANError, match="12x8 but the frames are 12x12: a different aspect ratio"):
        masks.resize_mask(labels, (12, 12))
    palette = bytes(range(12)) + bytes(756)
    masks.write_mask(tmp_path / "m.png", labels, palette)
    with Image.open(tmp_path / "m.png") as img:
        assert img.mode == "P" and img.getpalette()[:12] == list(range(12))
        assert np.array_equal(np.asarray(img), labels)
    assert [p.name for p in tmp_path.iterdir()] == ["m.png"]  # no temp file left


def test_a_broken_exif_block_leaves_the_stored_orientation(tmp_path, monkeypatch):
    """Pillow raises on some phones' EXIF blocks (e.g. ZeroDivisionError); such a frame is read as stored."""
    from PIL import ImageOps

    Image.fromarray(np.full((8, 12, 3), 50, np.uint8)).save(tmp_path / "0.png")

    def broken(img, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(ImageOps, "exif_transpose", broken)
    assert read_image(tmp_path / "0.png").shape == (8, 12, 3)
