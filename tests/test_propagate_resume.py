"""The output folder's policy (runtime/propagation/output.py): a resume continues only the same model
on the same input, one run at a time per folder, nothing a killed run left looks like a result, and
a resumed summary says what an uninterrupted one says. Also the step's void label and notes."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from cli_helpers import run_main
from propagate_helpers import G, PALETTE, frames_with_red, interrupt_after, objects, read_outputs, shift_encoder
from runtime.errors import CoordGANError
from runtime.io.masks import DAVIS_PALETTE, VOID, write_mask
from runtime.io.video import VideoWriter, open_frames
from runtime.propagation.memory import STATE_FILE
from runtime.propagation.model import CorrespondenceModel, resolve_encoder
from runtime.propagation.output import LOCK_FILE
from runtime.propagation.sequence import PropagateOptions, Reference, propagate_sequence

OPTS = PropagateOptions(batch=2, memory=2)
RESUME = PropagateOptions(batch=2, memory=2, resume=True)


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    """Two encoders that give the same maps from different files (as a float and an --int8 export would
    give near-identical ones): only the file's bytes tell them apart."""
    root = tmp_path_factory.mktemp("enc")
    a = shift_encoder(root / "a.onnx")
    b = onnx.load(a)
    b.doc_string = "another export"
    onnx.save(b, root / "b.onnx")
    with CorrespondenceModel(a, threads=1) as model_a, CorrespondenceModel(root / "b.onnx", threads=1) as model_b:
        yield model_a, model_b


def write_input(kind, path, frames):
    if kind == "folder":
        path.mkdir(parents=True, exist_ok=True)
        for t, frame in enumerate(frames):
            Image.fromarray(frame).save(path / f"{t:05d}.png")
    else:
        with VideoWriter(path, fps=10) as writer:
            for frame in frames:
                writer.write(frame)
    return path


def test_resume_refuses_another_model(encoders, tmp_path):
    model_a, model_b = encoders
    frames, refs = frames_with_red([0, 8, 16, 24, 32], G), [Reference(objects(G), PALETTE)]
    with pytest.raises(KeyboardInterrupt):
        propagate_sequence(model_a, frames, refs, tmp_path, OPTS, observer=interrupt_after(2))
    with pytest.raises(CoordGANError, match=r"holds an interrupted run with another model \(its file's SHA-256 "
                                            r"differs\); resume with the same model"):
        propagate_sequence(model_b, frames, refs, tmp_path, RESUME)
    propagate_sequence(model_a, frames, refs, tmp_path, RESUME)
    with pytest.raises(CoordGANError, match=r"holds the results of a run with another model"):
        propagate_sequence(model_b, frames, refs, tmp_path, RESUME)  # complete: not 'skipped' either


@pytest.mark.parametrize("kind", ["folder", "video"])
def test_resume_refuses_another_input_of_the_same_name(encoders, tmp_path, kind):
    model, _ = encoders
    clip = tmp_path / ("clip" if kind == "folder" else "clip.mp4")
    refs = [Reference(objects(G), PALETTE)]
    write_input(kind, clip, frames_with_red([0, 8, 16, 24, 32], G))
    with pytest.raises(KeyboardInterrupt):
        propagate_sequence(model, open_frames(clip), refs, tmp_path / "out", OPTS, observer=interrupt_after(2))
    write_input(kind, clip, frames_with_red([0, 16, 32, 48, 64], G))  # same name and length, other pixels
    with pytest.raises(CoordGANError, match=r"another input \(its content differs\)"):
        propagate_sequence(model, open_frames(clip), refs, tmp_path / "out", RESUME)


def test_resumed_run_removes_what_a_killed_writer_left_and_keeps_its_notes(tmp_path):
    """A collapsed encoder's warning is said at frame 0; the resumed run's summary still says it, and the
    temp files of a writer killed mid-write are gone; every mask equals the straight run's."""
    frames, refs = frames_with_red([0, 8, 16, 24, 32, 40], G), [Reference(objects(G), PALETTE)]
    with CorrespondenceModel(shift_encoder(tmp_path / "collapsed.onnx", extent=0.002)) as model:
        straight = propagate_sequence(model, frames, refs, tmp_path / "straight", PropagateOptions(batch=2, save_probs=True))
        out = tmp_path / "resumed"
        with pytest.raises(KeyboardInterrupt):
            propagate_sequence(model, frames, refs, out, PropagateOptions(batch=2, save_probs=True),
                               observer=interrupt_after(3))
        left = [out / ".00004.png.k1ll3d.tmp", out / "probs" / ".00004.npz.k1ll3d.tmp"]
        for temp in left:
            temp.write_bytes(b"half a file")
        resumed = propagate_sequence(model, frames, refs, out, PropagateOptions(batch=2, save_probs=True, resume=True))
    assert resumed["resumed_from"] == 2 and not any(p.exists() for p in left)
    assert len(straight["warnings"]) == 1 and resumed["warnings"] == straight["warnings"]
    for t in range(len(frames)):
        for rel in (f"{t:05d}.png", f"probs/{t:05d}.npz"):
            assert (out / rel).read_bytes() == (tmp_path / "straight" / rel).read_bytes(), rel


def test_one_run_at_a_time_per_folder_and_a_dead_holder_frees_it(encoders, tmp_path):
    model, _ = encoders
    frames, refs = frames_with_red([0, 8, 16], G), [Reference(objects(G), PALETTE)]
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         f"fd = os.open({str(out / LOCK_FILE)!r}, os.O_RDWR | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(120)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(CoordGANError, match="is being written by another propagation run right now"):
            propagate_sequence(model, frames, refs, out, OPTS)
        assert not (out / STATE_FILE).exists()  # refused before writing anything
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # as a worker killed for memory: the kernel drops its lock
        holder.wait()
    assert propagate_sequence(model, frames, refs, out, OPTS)["frames"] == 3


def test_a_summary_that_is_not_ours_does_not_make_a_folder_ours(encoders, tmp_path):
    model, _ = encoders
    (tmp_path / "summary.json").write_text(json.dumps({"frames": 3}))  # another tool's
    write_mask(tmp_path / "00000.png", objects(G), PALETTE)
    with pytest.raises(CoordGANError, match="holds PNG files that no propagation run left there"):
        propagate_sequence(model, frames_with_red([0], G), [Reference(objects(G), PALETTE)], tmp_path,
                           PropagateOptions(overwrite=True))
    assert (tmp_path / "00000.png").exists() and (tmp_path / "summary.json").exists()


def test_void_is_neither_propagated_nor_predicted(encoders, tmp_path):
    """DAVIS marks "don't care" pixels 255: they carry no label into the memory, and no output pixel gets
    255; every labelled pixel is still copied exactly by identity maps."""
    model, _ = encoders
    ref = objects(G)
    ref[0:4, :] = VOID
    summary = propagate_sequence(model, frames_with_red([0, 0, 0], G), [Reference(ref, PALETTE)], tmp_path, OPTS)
    masks, _ = read_outputs(tmp_path, 3)
    assert summary["labels"] == [0, 3, 7, 200] and VOID not in masks[1:]
    assert np.array_equal(masks[1][4:], ref[4:]) and np.array_equal(masks[2][4:], ref[4:])
    with pytest.raises(CoordGANError, match="holds only void pixels"):
        propagate_sequence(model, frames_with_red([0], G), [Reference(np.full((G, G), VOID, np.uint8))],
                           tmp_path / "void")


@pytest.mark.parametrize("topk, slow", [(None, True), (1, False)])
def test_collapsed_note_says_the_lookup_is_slow_only_when_it_is(tmp_path, topk, slow):
    with CorrespondenceModel(shift_encoder(tmp_path / "c.onnx", extent=0.002)) as model:
        summary = propagate_sequence(model, frames_with_red([0, 8], G), [Reference(objects(G))], tmp_path / "o",
                                     PropagateOptions(topk=topk))
    (note,) = summary["warnings"]
    assert note.startswith("collapsed maps") and "cannot follow the frames" in note
    assert ("every reference pixel carries weight" in note) == slow


def test_an_encoder_of_another_input_type_is_refused_before_any_output(tmp_path, monkeypatch, capsys):
    """An int32-input graph was run, failed at the first batch and left a state file that blocked the rerun."""
    x = helper.make_tensor_value_info("image", TensorProto.INT32, ["batch", 3, G, G])
    y = helper.make_tensor_value_info("corr_map", TensorProto.FLOAT, ["batch", 2, G, G])
    graph = helper.make_graph([helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
                               helper.make_node("Slice", ["f", "s", "e", "a"], ["corr_map"])], "int32", [x], [y],
                              [helper.make_tensor(n, TensorProto.INT64, [1], [v])
                               for n, v in (("s", 0), ("e", 2), ("a", 1))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "int32.onnx")
    write_input("folder", tmp_path / "frames", frames_with_red([0, 8], G))
    write_mask(tmp_path / "ref.png", objects(G), DAVIS_PALETTE)
    code, _, err = run_main(monkeypatch, capsys, "propagate", tmp_path / "frames", "--model", tmp_path / "int32.onnx",
                            "--ref", tmp_path / "ref.png", "--out", tmp_path / "out")
    assert code == 1 and "is not a CoordGAN encoder: its input image int32" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_tensorrt_without_an_engine_points_at_export_trt(tmp_path):
    (tmp_path / "encoder.onnx").write_bytes(b"")
    with pytest.raises(CoordGANError, match=r"holds no encoder.plan or encoder.engine; build the engine with "
                                            r"`coordgan export trt`"):
        resolve_encoder(str(tmp_path), backend="tensorrt")


def test_the_input_digest_is_the_same_in_every_process(tmp_path):
    """A resume runs in a new process (a retry on another worker, a rerun): the fingerprint must not
    depend on the process, e.g. on the hash seed that orders sets of paths."""
    write_input("folder", tmp_path / "clip", frames_with_red([0, 8, 16], G))
    code = ("import sys; from runtime.io.video import open_frames; from runtime.propagation.output import "
            "input_digest; print(input_digest(open_frames(sys.argv[1])))")
    digests = {subprocess.run([sys.executable, "-c", code, str(tmp_path / "clip")], capture_output=True, text=True,
                              check=True, env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in "0123"}
    assert len(digests) == 1


@pytest.mark.parametrize("changed, differs", [
    (dict(save_probs=True), "save_probs False then, True now"),  # probs/ would hold only the later frames
    (dict(lookup="dense"), "lookup 'sparse' then, 'dense' now"),  # another path's numbers for the later frames
])
def test_resume_refuses_options_that_change_what_is_written(encoders, tmp_path, changed, differs):
    model, _ = encoders
    frames, refs = frames_with_red([0, 8, 16, 24, 32], G), [Reference(objects(G), PALETTE)]
    with pytest.raises(KeyboardInterrupt):
        propagate_sequence(model, frames, refs, tmp_path, OPTS, observer=interrupt_after(2))
    with pytest.raises(CoordGANError, match=rf"holds an interrupted run with other options \({differs}\)"):
        propagate_sequence(model, frames, refs, tmp_path, PropagateOptions(batch=2, memory=2, resume=True, **changed))
    summary = propagate_sequence(model, frames, refs, tmp_path, RESUME)
    assert summary["options"]["lookup"] == "sparse"  # the path that ran, "auto" resolved


def test_a_resume_with_nothing_to_continue_keeps_someone_elses_overlay(encoders, tmp_path):
    model, _ = encoders
    overlay = tmp_path / "theirs.mp4"
    overlay.write_bytes(b"a video of someone else's")
    with pytest.raises(CoordGANError, match="already exists; pass --overwrite"):
        propagate_sequence(model, frames_with_red([0, 8], G), [Reference(objects(G), PALETTE)], tmp_path / "out",
                           PropagateOptions(resume=True, overlay=overlay))
    assert overlay.read_bytes() == b"a video of someone else's"


def test_frames_in_memory_count_whole(encoders, tmp_path):
    model, _ = encoders
    frames, refs = frames_with_red([0, 8, 16, 24], G), [Reference(objects(G), PALETTE)]
    with pytest.raises(KeyboardInterrupt):
        propagate_sequence(model, frames, refs, tmp_path, OPTS, observer=interrupt_after(2))
    other = frames.copy()
    other[3] = 255 - other[3]  # the same first frame and length, another last frame
    with pytest.raises(CoordGANError, match=r"another input \(its content differs\)"):
        propagate_sequence(model, other, refs, tmp_path, RESUME)


def test_resume_refuses_another_backend(encoders, tmp_path):
    """--backend auto may pick openvino in one process and onnxruntime in another; they agree only to
    ~1e-7, so a resume on the other one is refused, naming both."""
    pytest.importorskip("openvino", reason="needs the openvino extra")
    model, _ = encoders
    frames, refs = frames_with_red([0, 8, 16, 24], G), [Reference(objects(G), PALETTE)]
    with pytest.raises(KeyboardInterrupt):
        propagate_sequence(model, frames, refs, tmp_path, OPTS, observer=interrupt_after(2))
    with CorrespondenceModel(model.path, backend="openvino") as other:
        with pytest.raises(CoordGANError, match=r"other options \(backend 'onnxruntime' then, 'openvino' now\)"):
            propagate_sequence(other, frames, refs, tmp_path, RESUME)
