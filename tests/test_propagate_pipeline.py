"""`coordgan propagate` end to end with a real exported encoder (tiny preset, random weights).

The masks are meaningless with random weights, but everything around them is real: ONNX export,
ONNX Runtime, PyAV decoding and encoding, the three input layouts, resume, sharding, refusals and
`eval-video` on the outputs. Commands run in-process through `coordgan.cli.main` (the
CLI's own error handling) to save interpreter starts; one runs as a real subprocess.
"""

import json
import subprocess
import sys

import av
import numpy as np
import pytest
import torch
from PIL import Image

from cli_helpers import run_cli, run_main
from mask_helpers import png_with_short_palette
from coordgan.checkpoint import save
from coordgan.config import PRESETS
from coordgan.data.synthetic_faces import PALETTE, make_sequence
from coordgan.models import build
from runtime.io.masks import DAVIS_PALETTE, read_mask, write_mask
from runtime.io.video import open_frames
from runtime.propagation.memory import STATE_FILE
from runtime.propagation.model import CorrespondenceModel
from runtime.propagation.observer import CallbackObserver
from runtime.propagation.sequence import PropagateOptions, Reference, propagate_sequence

T, SIZE = 7, 64


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """root/tiny.safetensors, and its encoder exported the way `--model tiny.safetensors` does it:
    once, into the cache (root/cache/onnx/<sha>/encoder/), which then serves as an export directory."""
    from export.cache import export_dir

    root = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    ckpt = save(root / "tiny.safetensors", PRESETS["tiny"], build(PRESETS["tiny"], which=("g", "e")))
    (root / "export").symlink_to(export_dir(ckpt, "encoder", cache=root / "cache"))
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The same synthetic face sequence as an mp4, a folder of jpgs and a DAVIS root (two sequences)."""
    root = tmp_path_factory.mktemp("data")
    frames, masks = make_sequence(T, SIZE, seed=5)
    with av.open(str(root / "clip.mp4"), "w") as container:
        stream = container.add_stream("mpeg4", rate=12)
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode(None))
    (root / "frames").mkdir()
    for t, f in enumerate(frames):
        Image.fromarray(f).save(root / "frames" / f"img_{t:03d}.jpg", quality=95)
    write_mask(root / "ref.png", masks[0], DAVIS_PALETTE)
    small = np.asarray(Image.fromarray(masks[4]).resize((32, 32), Image.NEAREST))
    write_mask(root / "ref_small.png", small, DAVIS_PALETTE)
    for seq, seed in (("bear", 5), ("cat", 6)):
        fr, ms = make_sequence(T, SIZE, seed=seed)
        (root / "davis" / "JPEGImages" / "480p" / seq).mkdir(parents=True)
        (root / "davis" / "Annotations" / "480p" / seq).mkdir(parents=True)
        for t in range(T):
            Image.fromarray(fr[t]).save(root / "davis" / "JPEGImages" / "480p" / seq / f"{t:05d}.jpg")
            if seq == "bear" or t in (0, 3):  # bear: full ground truth; cat: two annotated frames
                write_mask(root / "davis" / "Annotations" / "480p" / seq / f"{t:05d}.png", ms[t], DAVIS_PALETTE)
    return root, frames, masks


def ok(monkeypatch, capsys, *args):
    code, out, err = run_main(monkeypatch, capsys, *args)
    assert code == 0, err
    return out, err


def test_video_end_to_end_with_overlay_probs_and_eval(exported, data, tmp_path, monkeypatch, capsys):
    root, _, masks = data
    out = tmp_path / "out"
    _, err = ok(monkeypatch, capsys, "propagate", root / "clip.mp4", "--model", exported / "export", "--ref",
                root / "ref.png", "--out", out, "--batch", 3, "--memory", 2, "--overlay", tmp_path / "ov.mp4",
                "--save-probs", "--device", "cpu")
    assert "clip: 7 frames" in err
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == [f"{t:05d}.png" for t in range(T)]
    first, palette = read_mask(out / "00000.png")
    assert np.array_equal(first, masks[0]) and palette[:48] == bytes(PALETTE[:48])
    for name in names:
        labels, _ = read_mask(out / name)
        assert labels.shape == (SIZE, SIZE) and set(np.unique(labels)) <= set(np.unique(masks[0]))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == T and summary["frames_per_s"] > 0 and summary["frame_size"] == [SIZE, SIZE]
    assert summary["options"] == {"batch": 3, "memory": 2, "tau": 0.01, "topk": None, "save_probs": True,
                                  "lookup": "sparse"}  # --device cpu's lookup path
    assert len(list((out / "probs").glob("*.npz"))) == T
    assert open_frames(tmp_path / "ov.mp4").count == T
    gt = tmp_path / "gt"
    gt.mkdir()
    for t in range(T):
        write_mask(gt / f"{t:05d}.png", masks[t], DAVIS_PALETTE)
    record = json.loads(ok(monkeypatch, capsys, "eval-video", out, gt, "--json")[0])
    g = record["global"]
    assert 0 <= g["J-Mean"] <= 1 and 0 <= g["F-Mean"] <= 1
    assert len(record["sequences"][out.name]["objects"]) == len(set(np.unique(masks).tolist()) - {0})


def test_frame_folder_keeps_frame_names_and_takes_a_second_low_res_reference(exported, data, tmp_path,
                                                                             monkeypatch, capsys):
    root, _, masks = data
    out = tmp_path / "out"
    ok(monkeypatch, capsys, "propagate", root / "frames", "--model", exported / "export" / "encoder.onnx",
       "--ref", root / "ref.png", "--ref", f"img_004={root / 'ref_small.png'}", "--out", out, "--topk", 8)
    assert sorted(p.name for p in out.glob("*.png")) == [f"img_{t:03d}.png" for t in range(T)]
    fourth, _ = read_mask(out / "img_004.png")
    small = np.asarray(Image.open(root / "ref_small.png"))
    assert np.array_equal(fourth, np.asarray(Image.fromarray(small).resize((SIZE, SIZE), Image.NEAREST)))
    summary = json.loads((out / "summary.json").read_text())
    assert [r["frame"] for r in summary["references"]] == ["img_000", "img_004"]


def test_davis_layout_sharded_then_evaluated(exported, data, tmp_path, monkeypatch, capsys):
    root, _, _ = data
    out = tmp_path / "out"
    for shard in ("0/2", "1/2"):
        _, err = ok(monkeypatch, capsys, "propagate", root / "davis", "--model", exported / "export", "--out", out,
                    "--shard", shard, "--batch", 4)
        assert ("bear" in err) == (shard == "0/2") and ("cat" in err) == (shard == "1/2")
    for seq in ("bear", "cat"):
        assert len(list((out / seq).glob("*.png"))) == T and (out / seq / "summary.json").exists()
    cat = json.loads((out / "cat" / "summary.json").read_text())
    bear = json.loads((out / "bear" / "summary.json").read_text())
    assert [r["frame"] for r in cat["references"]] == ["00000", "00003"]  # auto: sparse annotations, all used
    assert [r["frame"] for r in bear["references"]] == ["00000"]  # auto: full ground truth, first only
    assert np.array_equal(read_mask(out / "cat" / "00003.png")[0],
                          read_mask(root / "davis" / "Annotations" / "480p" / "cat" / "00003.png")[0])
    record = json.loads(ok(monkeypatch, capsys, "eval-video", out, root / "davis", "--json")[0])
    # cat's two annotations (0 and 3) leave no frame to score by the DAVIS protocol: named, not scored
    assert sorted(record["sequences"]) == ["bear"] and "no frame is left to score" in record["skipped"]["cat"]
    record = json.loads(ok(monkeypatch, capsys, "eval-video", out, root / "davis", "--json", "--all-frames")[0])
    assert sorted(record["sequences"]) == ["bear", "cat"] and record["skipped"] == {}
    _, err = ok(monkeypatch, capsys, "propagate", root / "davis", "--model", exported / "export", "--out", out,
                "--resume")
    assert "bear: already complete, skipped" in err and "cat: already complete, skipped" in err
    code, _, err = run_main(monkeypatch, capsys, "propagate", root / "davis", "--model", exported / "export",
                            "--out", tmp_path / "o3", "--shard", "2/2")
    assert code == 1 and "--shard 2/2: I must be in 0..N-1" in err


def test_resume_after_ctrl_c_gives_the_same_masks(exported, data, tmp_path, monkeypatch, capsys):
    root, _, _ = data
    args = ["propagate", root / "clip.mp4", "--model", exported / "export", "--ref", root / "ref.png",
            "--batch", 2, "--memory", 2, "--save-probs"]
    ok(monkeypatch, capsys, *args, "--out", tmp_path / "straight")
    import runtime.propagation.sequence as prop

    real_write, calls = prop.MaskWriter.write, []

    def write_then_stop(self, *a):
        real_write(self, *a)
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt  # Ctrl-C after the 5th frame

    monkeypatch.setattr(prop.MaskWriter, "write", write_then_stop)
    code, _, err = run_main(monkeypatch, capsys, *args, "--out", tmp_path / "resumed")
    assert code == 130 and err.endswith("Interrupted.\n") and "Traceback" not in err
    assert (tmp_path / "resumed" / STATE_FILE).exists() and not (tmp_path / "resumed" / "summary.json").exists()
    monkeypatch.setattr(prop.MaskWriter, "write", real_write)
    _, err = ok(monkeypatch, capsys, *args, "--out", tmp_path / "resumed", "--resume")
    assert "resumed at frame 4" in err
    for t in range(T):
        for rel in (f"{t:05d}.png", f"probs/{t:05d}.npz"):
            assert (tmp_path / "resumed" / rel).read_bytes() == (tmp_path / "straight" / rel).read_bytes(), rel
    # --resume into a folder that holds another input's results is refused, complete or not
    code, _, err = run_main(monkeypatch, capsys, "propagate", root / "frames", *args[2:], "--out", tmp_path / "straight",
                            "--resume")
    assert code == 1 and "holds the results of a run with another input (its content differs)" in err


def test_sigterm_stops_a_real_process_cleanly(exported, data, tmp_path):
    """SIGTERM mid-run (docker stop, Slurm): one sentence, exit 143, no temp file, not complete."""
    import shutil
    import signal
    import time

    root, _, _ = data
    frames, out = tmp_path / "frames", tmp_path / "o"
    frames.mkdir()
    for t in range(240):  # long enough to be mid-run when the signal comes
        shutil.copy(root / "frames" / f"img_{t % T:03d}.jpg", frames / f"f{t:04d}.jpg")
    proc = subprocess.Popen([sys.executable, "-m", "coordgan.cli", "propagate", str(frames), "--model",
                             str(exported / "export"), "--ref", str(root / "ref.png"), "--out", str(out),
                             "--batch", "1", "--save-probs"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / STATE_FILE).exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and err.endswith("Stopped by SIGTERM.\n") and "Traceback" not in err, (proc.returncode,
                                                                                                        err[-2000:])
    assert not (out / "summary.json").exists() and len(list(out.glob("*.png"))) < 240
    assert not list(out.rglob(".*.tmp*"))


def test_python_api_resume_with_a_hook(exported, data, tmp_path):
    _, frames, masks = data
    refs = [Reference(masks[0], bytes(PALETTE))]
    opts = PropagateOptions(batch=2, memory=1)

    def stop(done, total):
        if done == 3:
            raise KeyboardInterrupt

    with CorrespondenceModel(exported / "export" / "encoder.onnx") as model:
        straight = propagate_sequence(model, frames, refs, tmp_path / "a", opts)
        with pytest.raises(KeyboardInterrupt):
            propagate_sequence(model, frames, refs, tmp_path / "b", opts, observer=CallbackObserver(stop))
        resumed = propagate_sequence(model, frames, refs, tmp_path / "b", PropagateOptions(batch=2, memory=1,
                                                                                           resume=True))
    assert straight["frames"] == resumed["frames"] == T and resumed["resumed_from"] == 2
    for t in range(T):
        name = f"{t:05d}.png"
        assert np.array_equal(read_mask(tmp_path / "a" / name)[0], read_mask(tmp_path / "b" / name)[0])


@pytest.fixture(scope="module")
def bad(exported, data, tmp_path_factory):
    """The inputs of the refusal cases below, made once."""
    root, _, masks = data
    tmp = tmp_path_factory.mktemp("bad")
    (tmp / "junk.mp4").write_bytes(b"\x00garbage" * 100)
    (tmp / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    write_mask(tmp / "wide.png", np.zeros((32, 64), np.uint8), DAVIS_PALETTE)
    (tmp / "empty").mkdir()
    png_with_short_palette(tmp / "short.png", masks[0], 3)
    return {"tmp": tmp, "root": root, "model": exported / "export", "ref": root / "ref.png",
            "clip": root / "clip.mp4"}


# Each case: the arguments of `coordgan propagate` (given the paths of `bad`) and what its one sentence says.
REFUSALS = {
    "junk video": (lambda b: [b["tmp"] / "junk.mp4", "--model", b["model"], "--ref", b["ref"]],
                   "junk.mp4 cannot be read (Invalid data"),
    "broken reference png": (lambda b: [b["clip"], "--model", b["model"], "--ref", b["tmp"] / "bad.png"],
                             "bad.png cannot be read as an image"),
    "reference of another aspect": (lambda b: [b["clip"], "--model", b["model"], "--ref", b["tmp"] / "wide.png"],
                                    "is 64x32 but the frames are 64x64"),
    "folder without frames": (lambda b: [b["tmp"] / "empty", "--model", b["model"], "--ref", b["ref"]],
                              "holds no .jpg or .png frames"),
    "missing model": (lambda b: [b["clip"], "--model", b["tmp"] / "nope.onnx", "--ref", b["ref"]],
                      "nope.onnx does not exist"),
    "no model": (lambda b: [b["clip"], "--ref", b["ref"]], "Give the encoder with --model"),
    "palette too short": (lambda b: [b["clip"], "--model", b["model"], "--ref", b["tmp"] / "short.png"],
                          "uses label 7 but its palette has only 3 colours"),
    "no reference": (lambda b: [b["clip"], "--model", b["model"]], "Give the first frame's label mask with --ref"),
    "--ref with a DAVIS root": (lambda b: [b["root"] / "davis", "--model", b["model"], "--ref", b["ref"]],
                                "--ref applies to a video or a frame folder"),
    "reference beyond the video": (lambda b: [b["clip"], "--model", b["model"], "--ref", f"00020={b['ref']}"],
                                   "beyond the last frame"),
    "unreachable Triton": (lambda b: [b["clip"], "--backend", "triton", "--url", "triton+http://127.0.0.1:9/enc",
                                      "--ref", b["ref"]], "Cannot reach a Triton server"),
    "tensorrt without a plan": (lambda b: [b["clip"], "--model", b["model"], "--backend", "tensorrt", "--ref", b["ref"]],
                                "build the engine with `coordgan export trt`"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_bad_input_is_refused_in_one_sentence_before_any_output(case, bad, monkeypatch, capsys):
    args, message = REFUSALS[case]
    out = bad["tmp"] / f"out-{case}"
    code, _, err = run_main(monkeypatch, capsys, "propagate", *args(bad), "--out", out)
    assert code == 1 and message in err and "Traceback" not in err, err
    assert err.startswith("Error: ") and err.count("\n") == 1, err
    assert not out.exists()  # nothing made, or the empty folder removed


def test_output_folders_that_are_not_ours_are_never_written(exported, data, tmp_path, monkeypatch, capsys):
    root = data[0]
    model, ref = exported / "export", root / "ref.png"
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "00000.png").write_bytes(b"x")
    run = ["propagate", root / "clip.mp4", "--model", model, "--ref", ref, "--out"]
    for extra in ((), ("--overwrite",)):  # PNGs no run left there are never deleted
        code, _, err = run_main(monkeypatch, capsys, *run, tmp_path / "done", *extra)
        assert code == 1 and "holds PNG files that no propagation run left there" in err
    assert (tmp_path / "done" / "00000.png").read_bytes() == b"x"
    for extra in ((), ("--resume",), ("--overwrite",)):  # where ref.png lives: never written into
        code, _, err = run_main(monkeypatch, capsys, *run, root, *extra)
        assert code == 1 and "holds PNG files that no propagation run left there" in err
    assert (root / "ref.png").is_file()
    ok(monkeypatch, capsys, *run, tmp_path / "ours")
    code, _, err = run_main(monkeypatch, capsys, *run, tmp_path / "ours")
    assert code == 1 and "already holds propagation results; pass --overwrite" in err
    ok(monkeypatch, capsys, *run, tmp_path / "ours", "--overwrite")
    assert read_mask(tmp_path / "ours" / "00000.png")[0].shape == (SIZE, SIZE)
    base = ["propagate", root / "clip.mp4", "--model", model, "--ref", ref, "--out", tmp_path / "ov", "--overlay"]
    for overlay, message in ((tmp_path, "is a folder; give the video's file name"),
                             (root / "clip.mp4", "is the input video"),
                             (root / "frames" / "img_000.jpg", "use a .mp4")):
        for extra in ((), ("--resume",)):
            code, _, err = run_main(monkeypatch, capsys, *base, overlay, *extra)
            assert code == 1 and message in err and err.count("\n") == 1, err
    (tmp_path / "someone_elses.mp4").write_bytes(b"x")
    code, _, err = run_main(monkeypatch, capsys, *base, tmp_path / "someone_elses.mp4")
    assert code == 1 and "overlay video" in err and "already exists; pass --overwrite" in err
    assert not list((tmp_path / "ov").glob("*.png"))


def test_a_real_process_prints_no_traceback(exported, data, tmp_path):
    root, _, _ = data
    junk = tmp_path / "junk.mkv"
    junk.write_bytes(b"\x1aE\xdf\xa3 broken matroska" * 40)
    result = subprocess.run([sys.executable, "-m", "coordgan.cli", "propagate", str(junk), "--model",
                             str(exported / "export"), "--ref", str(root / "ref.png"), "--out", str(tmp_path / "o")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stderr.startswith("Error: Video") and "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_propagate_runs_with_torch_unimportable(exported, data, tmp_path, monkeypatch, capsys):
    """The deployment path: the whole `coordgan` CLI on a box without PyTorch, video in, masks and overlay
    out, the same masks as the in-process run here."""
    root, _, _ = data
    args = ["propagate", root / "clip.mp4", "--model", exported / "export" / "encoder.onnx", "--ref",
            root / "ref.png", "--device", "cpu"]
    result = run_cli(*args, "--out", tmp_path / "a", "--overlay", tmp_path / "a.mp4", block_torch=True)
    assert result.returncode == 0, result.stderr
    assert open_frames(tmp_path / "a.mp4").count == T
    ok(monkeypatch, capsys, *args, "--out", tmp_path / "b")
    for t in range(T):
        assert (tmp_path / "a" / f"{t:05d}.png").read_bytes() == (tmp_path / "b" / f"{t:05d}.png").read_bytes()


def test_checkpoint_model_uses_the_export_cache(exported, data, tmp_path, monkeypatch, capsys):
    root, _, _ = data
    assert (exported / "export" / "manifest.json").exists()  # the fixture exported it (and verified it)
    monkeypatch.setenv("COORDGAN_CACHE", str(exported / "cache"))
    args = ["propagate", root / "clip.mp4", "--ref", root / "ref.png"]
    _, err = ok(monkeypatch, capsys, *args, "--model", exported / "tiny.safetensors", "--out", tmp_path / "a")
    assert "exporting" not in err  # found in the cache: not exported again
    ok(monkeypatch, capsys, *args, "--model", exported / "export" / "encoder.onnx", "--out", tmp_path / "b")
    assert (tmp_path / "a" / "00006.png").read_bytes() == (tmp_path / "b" / "00006.png").read_bytes()
