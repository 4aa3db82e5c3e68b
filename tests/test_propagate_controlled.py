"""Propagation with correspondence maps we control: a hand-built ONNX "encoder" on real ONNX Runtime
(tests/propagate_helpers.py). A frame whose red is 0 gets the identity map, so the reference mask must
be copied exactly; frame t with red 16 t gets a map shifted by t pixels, so the mask must move by t.
"""

import json

import numpy as np
import pytest
from PIL import Image

from runtime.errors import CoordGANError
from runtime.io.masks import read_mask
from runtime.io.video import open_frames
from runtime.propagation.memory import STATE_FILE
from runtime.propagation.model import CorrespondenceModel
from runtime.lookup.spec import LookupParams
from runtime.propagation.observer import CallbackObserver
from runtime.propagation.sequence import PropagateOptions, Reference, propagate_sequence

from propagate_helpers import G, PALETTE, frames_with_red, interrupt_after, objects, read_outputs, shift_encoder

@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("enc")
    right = CorrespondenceModel(shift_encoder(root / "right.onnx", (1, 0)), threads=1)
    down = CorrespondenceModel(shift_encoder(root / "down.onnx", (0, 1)), threads=1)
    yield {"right": right, "down": down}
    right.close()
    down.close()


def shifted(mask, dy, dx):
    out = np.zeros_like(mask)
    h, w = mask.shape
    out[dy:, dx:] = mask[: h - dy, : w - dx]
    return out


@pytest.mark.parametrize("scale", [1, 2])
def test_identity_maps_copy_the_reference_exactly(models, tmp_path, scale):
    ref = objects(G, scale)
    frames = frames_with_red([0] * 5, G * scale)
    summary = propagate_sequence(models["right"], frames, [Reference(ref, PALETTE)], tmp_path,
                                 PropagateOptions(batch=2, memory=2))
    masks, palette = read_outputs(tmp_path, 5)
    assert all(np.array_equal(m, ref) for m in masks)
    assert palette[:768] == PALETTE and summary["labels"] == [0, 3, 7, 200]
    assert summary["frames"] == 5 and summary["frame_size"] == [G * scale, G * scale]
    assert set(summary["seconds"]) == {"decode", "preprocess", "encoder", "lookup", "upsample_argmax", "write", "total"}
    assert json.loads((tmp_path / "summary.json").read_text())["frames"] == 5
    assert not (tmp_path / STATE_FILE).exists()


@pytest.mark.parametrize("model, scale, topk", [("right", 1, None), ("down", 2, None), ("right", 1, 4)])
def test_shifted_maps_move_the_mask_by_the_shift(models, tmp_path, model, scale, topk):
    n = 6
    frames = frames_with_red([16 * t for t in range(n)], G * scale)
    ref = objects(G, scale)
    propagate_sequence(models[model], frames, [Reference(ref, PALETTE)], tmp_path,
                       PropagateOptions(batch=4, memory=3, topk=topk))
    masks, _ = read_outputs(tmp_path, n)
    for t, m in enumerate(masks):
        d = t * scale
        expected = shifted(ref, 0, d) if model == "right" else shifted(ref, d, 0)
        assert np.array_equal(m, expected), f"frame {t}"


def test_probabilities_saved_and_overlay_written(models, tmp_path):
    frames = frames_with_red([0, 16, 32], G)
    overlay = tmp_path / "overlay.mp4"
    propagate_sequence(models["right"], frames, [Reference(objects(G), PALETTE)], tmp_path / "out",
                       PropagateOptions(save_probs=True, overlay=overlay))
    with np.load(tmp_path / "out" / "probs" / "00001.npz") as z:
        assert z["probs"].dtype == np.float16 and z["probs"].shape == (4, G, G)
        assert z["labels"].tolist() == [0, 3, 7, 200]
        assert np.allclose(z["probs"].astype(np.float32).sum(0), 1, atol=1e-2)
    video = open_frames(overlay)
    assert video.count == 3 and next(video.frames())[2].shape == (G, G, 3)


def test_frames_from_a_generator_stream_through(models, tmp_path):
    ref = objects(G)
    stream = ((f"f{t}", frame) for t, frame in enumerate(frames_with_red([16 * t for t in range(4)], G)))
    summary = propagate_sequence(models["right"], stream, [Reference(ref, PALETTE, 0)], tmp_path)
    assert summary["frames"] == 4 and summary["input"] == "<iterator>"
    assert np.array_equal(read_mask(tmp_path / "f3.png")[0], shifted(ref, 0, 3))


def test_later_annotation_takes_effect_from_its_frame(models, tmp_path):
    first = objects(G)
    later = first.copy()
    later[0:4, 26:32] = 9  # a new object enters at frame 3
    frames = frames_with_red([0] * 6, G)
    summary = propagate_sequence(models["right"], frames, [Reference(first, PALETTE), Reference(later, None, "3")],
                                 tmp_path, PropagateOptions(memory=0))
    masks, _ = read_outputs(tmp_path, 6)
    assert np.array_equal(masks[2], first) and np.array_equal(masks[3], later)
    assert summary["labels"] == [0, 3, 7, 9, 200]
    assert [r["frame"] for r in summary["references"]] == ["00000", "00003"]


def test_resume_after_interruption_gives_the_same_outputs(models, tmp_path):
    frames = frames_with_red([8 * t for t in range(9)], G)  # half-pixel steps: soft, memory-dependent labels
    refs = [Reference(objects(G), PALETTE)]
    overlay = tmp_path / "overlay.mp4"
    opts = PropagateOptions(batch=3, memory=2, save_probs=True, overlay=overlay)
    straight_overlay = tmp_path / "straight.mp4"
    propagate_sequence(models["right"], frames, refs, tmp_path / "straight",
                       PropagateOptions(batch=3, memory=2, save_probs=True, overlay=straight_overlay))
    with pytest.raises(KeyboardInterrupt):
        propagate_sequence(models["right"], frames, refs, tmp_path / "resumed", opts, observer=interrupt_after(5))
    out = tmp_path / "resumed"
    assert (out / STATE_FILE).exists() and not (out / "summary.json").exists()
    assert not list(out.glob(".*.tmp")) and not list(tmp_path.glob("*overlay*"))  # nothing half-written
    with pytest.raises(CoordGANError, match="already holds propagation results; pass --overwrite"):
        propagate_sequence(models["right"], frames, refs, out, opts)
    with pytest.raises(CoordGANError, match=r"holds an interrupted run with other options \(tau 0.01 then, 0.02 now\)"):
        propagate_sequence(models["right"], frames, refs, out, PropagateOptions(batch=3, memory=2, tau=0.02,
                                                                                  save_probs=True, resume=True))
    summary = propagate_sequence(models["right"], frames, refs, out,
                                 PropagateOptions(batch=3, memory=2, save_probs=True, resume=True, overlay=overlay))
    assert summary["resumed_from"] == 3 and summary["frames"] == 9 and summary["frames_processed"] == 6
    assert open_frames(overlay).count == 9  # rebuilt from frame 0: earlier frames with their masks on disk
    assert overlay.read_bytes() == straight_overlay.read_bytes()  # the README promises the same bytes
    for t in range(9):
        name = f"{t:05d}"
        assert (out / f"{name}.png").read_bytes() == (tmp_path / "straight" / f"{name}.png").read_bytes()
        with np.load(out / "probs" / f"{name}.npz") as a, np.load(tmp_path / "straight" / "probs" / f"{name}.npz") as b:
            assert np.array_equal(a["probs"], b["probs"])
    again = propagate_sequence(models["right"], frames, refs, out, PropagateOptions(batch=3, memory=2, save_probs=True,
                                                                                    resume=True))
    assert again["skipped"] == "already complete"
    with pytest.raises(CoordGANError,
                       match=r"holds the results of a run with other options \(memory 2 then, 3 now, save_probs True then"):
        propagate_sequence(models["right"], frames, refs, out, PropagateOptions(resume=True))  # not 'complete'


def test_overwrite_replaces_and_never_leaves_a_stale_summary(models, tmp_path):
    frames = frames_with_red([0] * 3, G)
    refs = [Reference(objects(G), PALETTE)]
    propagate_sequence(models["right"], frames, refs, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        propagate_sequence(models["right"], frames, refs, tmp_path, PropagateOptions(overwrite=True, batch=1),
                           observer=interrupt_after(1))
    assert not (tmp_path / "summary.json").exists()  # the interrupted rerun is not complete
    propagate_sequence(models["right"], frames, refs, tmp_path, PropagateOptions(overwrite=True, save_probs=True))
    assert (tmp_path / "summary.json").exists()
    # a shorter rerun leaves none of the longer run's masks or probabilities behind
    propagate_sequence(models["right"], frames[:2], refs, tmp_path, PropagateOptions(overwrite=True))
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["00000.png", "00001.png"]
    assert not list((tmp_path / "probs").glob("*.npz"))
    # a first run into a folder that holds someone else's probs/*.npz (and no run of ours) keeps them
    other = tmp_path / "other"
    (other / "probs").mkdir(parents=True)
    (other / "probs" / "theirs.npz").write_bytes(b"x")
    propagate_sequence(models["right"], frames, refs, other)
    assert (other / "probs" / "theirs.npz").read_bytes() == b"x"


def test_reference_problems_are_one_sentence_errors(models, tmp_path):
    frames = frames_with_red([0] * 4, G)
    ref = Reference(objects(G), PALETTE)
    model = models["right"]
    with pytest.raises(CoordGANError, match="propagation runs forward from the first frame"):
        propagate_sequence(model, frames, [Reference(objects(G), PALETTE, "2")], tmp_path / "a")
    with pytest.raises(CoordGANError, match="Two reference masks"):
        propagate_sequence(model, frames, [ref, Reference(objects(G), None, "00000")], tmp_path / "b")
    with pytest.raises(CoordGANError, match="beyond the last frame"):
        propagate_sequence(model, frames, [ref, Reference(objects(G), None, "7")], tmp_path / "c")
    with pytest.raises(CoordGANError, match="use label 200, but the palette .* has only 10 colours"):
        propagate_sequence(model, frames, [Reference(objects(G), PALETTE[:30])], tmp_path / "d")
    with pytest.raises(CoordGANError, match="is 32x16 but the frames are 32x32: a different aspect ratio"):
        propagate_sequence(model, frames, [Reference(objects(G)[:16], PALETTE)], tmp_path / "e")
    assert not (tmp_path / "e").exists()  # refused before writing anything: the folder it made is gone
    with pytest.raises(CoordGANError, match="at least one reference"):
        propagate_sequence(model, frames, [], tmp_path / "f")
    with pytest.raises(CoordGANError, match="memory must be a whole number of frames, 0 or more, got -1"):
        propagate_sequence(model, frames, [ref], tmp_path / "g", PropagateOptions(memory=-1))
    with pytest.raises(CoordGANError, match="tau must be a finite number > 0, got inf"):
        propagate_sequence(model, frames, [ref], tmp_path / "h", PropagateOptions(tau=float("inf")))
    with pytest.raises(CoordGANError, match="Cannot write the video .*overlay.png: use a .mp4"):
        propagate_sequence(model, frames, [ref], tmp_path / "i", PropagateOptions(overlay=tmp_path / "overlay.png"))
    assert not list((tmp_path / "i").glob("*.png"))  # refused before the first mask


def test_low_resolution_reference_is_resized_and_grayscale_gets_davis_colours(models, tmp_path):
    ref = objects(G, 2)  # 64x64 frames
    small = np.asarray(Image.fromarray(ref).resize((32, 32), Image.NEAREST))
    frames = frames_with_red([0] * 2, 64)
    propagate_sequence(models["right"], frames, [Reference(small)], tmp_path)
    masks, palette = read_outputs(tmp_path, 2)
    assert np.array_equal(masks[0], ref) and np.array_equal(masks[1], ref)
    assert palette[3 * 3: 3 * 4] == bytes([128, 128, 0])  # DAVIS colour of label 3


def test_output_folder_must_not_be_the_input_folder(models, tmp_path):
    for t in range(2):
        Image.fromarray(frames_with_red([0], G)[0]).save(tmp_path / f"{t:05d}.png")
    with pytest.raises(CoordGANError, match="is the input frame folder"):
        propagate_sequence(models["right"], open_frames(tmp_path), [Reference(objects(G), PALETTE)], tmp_path)


def test_grid_resampling_helpers():
    from runtime.propagation.label_resize import labels_to_grid, upsample, upsample_argmax

    channels = np.kron(np.array([[0, 1], [2, 0]]), np.ones((3, 5), np.int64))  # 6x10 frame, 2x2 grid cells
    probs = labels_to_grid(channels, 3, 2)
    assert np.array_equal(probs.argmax(0), [[0, 1], [2, 0]]) and np.allclose(probs.sum(0), 1)
    odd = labels_to_grid(np.array([[0, 0, 1]]), 2, 1)  # one cell covering 2/3 label 0, 1/3 label 1
    assert np.allclose(odd[:, 0, 0], [2 / 3, 1 / 3])
    rng = np.random.default_rng(1)
    p = rng.random((4, 8, 8)).astype(np.float32)
    up = upsample(p, (20, 30))
    assert up.shape == (4, 20, 30) and np.allclose(up.sum(0), upsample(p.sum(0, keepdims=True), (20, 30))[0])
    assert np.array_equal(upsample_argmax(p, (20, 30), rows=7), up.argmax(0))
    assert np.allclose(upsample(np.ones((1, 8, 8), np.float32), (17, 5)), 1)  # rows of weights sum to 1


def test_a_reference_given_as_probabilities_acts_as_its_mask():
    """Propagator.add_reference (a benchmark's workload memory) gives the masks the annotated mask it
    was made from gives; probabilities over another label count are one sentence."""
    from coordgan.correspondence import canonical_grid
    from runtime.propagation.label_resize import labels_to_grid
    from runtime.propagation.step import Propagator

    corr = canonical_grid(8, 8).numpy()
    mask = np.kron(np.array([[0, 3], [7, 0]], np.uint8), np.ones((16, 16), np.uint8))  # 32x32, 3 labels
    annotated = Propagator(LookupParams(memory=0), labels=[0, 3, 7])
    annotated.annotate("ref", corr, mask)
    given = Propagator(LookupParams(memory=0), labels=[0, 3, 7])
    given.add_reference("ref", corr, labels_to_grid(given.labels.channel_of[mask], 3, 8))
    shifted_corr = np.roll(corr, 1, axis=2)
    (m_a, p_a), (m_g, p_g) = (s.propagate("next", shifted_corr, (32, 32)) for s in (annotated, given))
    assert np.array_equal(m_a, m_g) and np.array_equal(p_a, p_g) and set(np.unique(m_g)) == {0, 3, 7}
    with pytest.raises(CoordGANError, match="have 2 label channels; this sequence knows 3 labels"):
        given.add_reference("bad", corr, np.ones((2, 8, 8), np.float32) / 2)


def test_bilinear_upsampling_matches_torch_interpolate():
    torch = pytest.importorskip("torch")
    p = np.random.default_rng(2).random((3, 8, 8)).astype(np.float32)
    from runtime.propagation.label_resize import upsample

    for size in ((20, 30), (8, 13), (64, 64)):
        ref = torch.nn.functional.interpolate(torch.from_numpy(p)[None], size=size, mode="bilinear",
                                              align_corners=False)[0].numpy()
        assert np.allclose(upsample(p, size), ref, atol=1e-6)


def test_collapsed_maps_are_said_once_and_still_propagated(tmp_path, monkeypatch, capsys):
    """Maps spread over a fraction of tau (an untrained encoder's): one warning naming the spread, in the
    summary and as one line of `coordgan propagate`; every mask is still written (the lookup compares all)."""
    from cli_helpers import run_main
    from runtime.io.masks import DAVIS_PALETTE, write_mask

    encoder = shift_encoder(tmp_path / "collapsed.onnx", extent=0.002)
    notes = []
    with CorrespondenceModel(encoder) as model:
        summary = propagate_sequence(model, frames_with_red([0, 16, 32, 48], G), [Reference(objects(G))],
                                     tmp_path / "out", PropagateOptions(batch=2),
                                     observer=CallbackObserver(on_note=notes.append))
    assert len(notes) == 1 and summary["warnings"] == notes
    assert notes[0].startswith("collapsed maps: frame 00000's correspondence map spreads 0.00")
    assert "less than 5 x tau = 0.05" in notes[0] and "untrained or broken encoder" in notes[0]
    assert len(list((tmp_path / "out").glob("*.png"))) == 4
    frames = tmp_path / "frames"
    frames.mkdir()
    for t, f in enumerate(frames_with_red([0, 16, 32], G)):
        Image.fromarray(f).save(frames / f"{t:05d}.png")
    write_mask(tmp_path / "ref.png", objects(G), DAVIS_PALETTE)
    code, _, err = run_main(monkeypatch, capsys, "propagate", frames, "--model", encoder, "--ref", tmp_path / "ref.png",
                            "--out", tmp_path / "cli", "--device", "cpu")
    assert code in (0, None), err
    warned = [line for line in err.splitlines() if "collapsed maps" in line]
    assert len(warned) == 1 and warned[0].startswith("warning frames: collapsed maps") and "untrained" in warned[0]


def test_overlapped_and_sequential_runs_write_the_same_bytes(models, tmp_path):
    """--overlap (frames decoded ahead, files written on a thread) against each stage in turn, on a real
    video file: every mask PNG and probability file byte for byte, and the overlay's frames."""
    from runtime.io.video import VideoWriter

    video = tmp_path / "clip.mp4"
    with VideoWriter(video, fps=10) as w:
        for frame in frames_with_red([8 * t for t in range(11)], G):
            w.write(frame)
    refs = [Reference(objects(G), PALETTE)]
    runs = {}
    for overlap in (False, True):
        out = tmp_path / f"overlap-{overlap}"
        opts = PropagateOptions(batch=4, memory=2, save_probs=True, overlay=tmp_path / f"{out.name}.mp4",
                                overlap=overlap)
        runs[overlap] = propagate_sequence(models["right"], open_frames(video), refs, out, opts)
    assert runs[True]["frames_processed"] == runs[False]["frames_processed"] == 11
    seq, ovl = tmp_path / "overlap-False", tmp_path / "overlap-True"
    names = sorted(p.name for p in seq.rglob("*") if p.is_file() and p.suffix in (".png", ".npz"))
    assert len(names) == 22 and names == sorted(p.name for p in ovl.rglob("*") if p.suffix in (".png", ".npz"))
    for path in seq.rglob("*"):
        if path.suffix in (".png", ".npz"):
            assert path.read_bytes() == (ovl / path.relative_to(seq)).read_bytes(), path.name
    a = [f for _, _, f in open_frames(tmp_path / "overlap-False.mp4").frames()]
    b = [f for _, _, f in open_frames(tmp_path / "overlap-True.mp4").frames()]
    assert len(a) == len(b) == 11 and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_a_failed_mask_write_stops_the_run_before_its_state_passes_the_frame(models, tmp_path, monkeypatch):
    """A write on the writer thread that fails is raised by the run, at the end of that frame's batch at
    the latest: the resume state never moves past a mask that is not on disk, and nothing looks complete."""
    from runtime.io import masks as mask_io
    from runtime.propagation.memory import Memory

    real = mask_io.write_mask

    def failing(path, labels, palette):
        if path.name == "00005.png":
            raise OSError(28, "No space left on device")
        real(path, labels, palette)

    monkeypatch.setattr(mask_io, "write_mask", failing)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="No space left"):
        propagate_sequence(models["right"], frames_with_red([8 * t for t in range(11)], G),
                           [Reference(objects(G), PALETTE)], out, PropagateOptions(batch=4, memory=2))
    assert not (out / "summary.json").exists()
    _, next_frame, _ = Memory.load(out / STATE_FILE, 2)
    assert next_frame == 4  # frames 4..7 are redone on --resume; 00005.png was never written
    assert not (out / "00005.png").exists() and (out / "00004.png").exists()
    assert not list(out.glob(".*tmp*"))


def test_many_labels_leave_no_subnormal_probabilities_in_the_memory(models, tmp_path):
    """A label's probability far from where it is shrinks each frame; the lookup flushes it to 0 below
    1e-20, so the memory never fills with subnormal floats (which made 255-label runs 10x slower)."""
    from runtime.lookup.inputs import FLUSH_BELOW
    from runtime.propagation.step import Propagator

    model = models["right"]
    frames = frames_with_red([8 * t for t in range(14)], G)
    corr = model.correspondence(frames)
    mosaic = ((np.arange(G)[:, None] // 4) * 8 + np.arange(G)[None] // 4).astype(np.uint8)  # 64 labels
    step = Propagator(LookupParams(memory=3), labels=np.unique(mosaic))
    step.annotate("00000", corr[0], mosaic)
    for t in range(1, len(frames)):
        step.propagate(f"{t:05d}", corr[t], (G, G))
    _, values = step.memory.keys_values()
    assert values.shape[1:3] == (4, 64)
    assert not np.any((values != 0) & (np.abs(values) < FLUSH_BELOW))
    assert np.count_nonzero(values[0, 1:]) > 0
