"""`coordgan demo` (the README's `make demo`): end to end on a small video, and with the shipped checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cli_helpers import run_main
from coordgan.checkpoint import save
from coordgan.config import PRESETS
from coordgan.demo import SHIPPED_CKPT
from coordgan.models import build
from runtime.errors import CoordGANError


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    return save(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", PRESETS["tiny"],
                build(PRESETS["tiny"], which=("g", "e")))


def test_demo_writes_every_output(tiny_ckpt, tmp_path, monkeypatch, capsys):
    ckpt = tiny_ckpt
    out = tmp_path / "demo"
    code, stdout, err = run_main(monkeypatch, capsys, "demo", "--ckpt", ckpt, "--out", out, "--frames", 6,
                                 "--size", 64)
    assert code in (0, None), err
    assert "identity baseline" in stdout and "frames/s" in stdout
    for folder in ("gt", "identity", "masks"):
        assert len(list((out / folder).glob("*.png"))) == 6, folder
    assert (out / "faces.mp4").stat().st_size > 0 and (out / "overlay.mp4").stat().st_size > 0
    strip = np.asarray(Image.open(out / "strip.png").convert("RGB"))
    cell = 96  # 64 px frames are shown at 96
    assert strip.shape == (4 * (cell + 2) + 2, 120 + 5 * (cell + 2) + 2, 3)  # 4 rows named on the left, 5 frames
    first_frame = strip[2:2 + cell, 122:122 + cell]
    assert first_frame.std() > 10  # a face drawn there, not a blank cell
    assert str(out / "strip.png") in stdout
    result = json.loads((out / "demo.json").read_text())
    assert result["outputs"]["picture"] == str(out / "strip.png")
    assert set(result) >= {"propagated", "identity baseline", "frames_per_s", "wall_s"}
    assert 0.0 <= result["identity baseline"]["J_mean"] <= 1.0
    # a shorter demo into the same folder scores its own frames only (no earlier ones left over)
    code, _, err = run_main(monkeypatch, capsys, "demo", "--ckpt", ckpt, "--out", out, "--frames", 4, "--size", 64)
    assert code in (0, None), err
    for folder in ("gt", "identity", "masks"):
        assert len(list((out / folder).glob("*.png"))) == 4, folder
    assert json.loads((out / "demo.json").read_text())["frames"] == 4
    code, _, err = run_main(monkeypatch, capsys, "demo", "--ckpt", ckpt, "--out", out, "--frames", 0)
    assert code == 1 and "--frames 3 or more" in err and err.count("\n") == 1
    assert json.loads((out / "demo.json").read_text())["frames"] == 4  # refused up front: the last run's, intact


def test_demo_without_checkpoint_is_one_sentence(tmp_path, monkeypatch, capsys):
    code, _, err = run_main(monkeypatch, capsys, "demo", "--ckpt", tmp_path / "none.safetensors", "--out",
                            tmp_path / "demo")
    assert code == 1
    assert err.startswith("Error:") and "does not exist" in err and err.count("\n") == 1
    assert not (tmp_path / "demo").exists()


@pytest.mark.skipif(SHIPPED_CKPT.is_file(), reason="the shipped checkpoint is in this checkout")
def test_demo_without_the_shipped_checkpoint_says_none_ships_and_what_to_run(tmp_path, monkeypatch, capsys):
    code, _, err = run_main(monkeypatch, capsys, "demo", "--out", tmp_path / "demo")
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith("Error: No trained checkpoint ships yet (checkpoints/README.md says why and how")
    assert "--ckpt CKPT" in err and "coordgan train-encoder" in err and "make demo" in err
    assert not (tmp_path / "demo").exists()


def test_demo_options_are_checked_before_any_work(tiny_ckpt, tmp_path, monkeypatch, capsys):
    """A bad option is refused before the export (nothing made in --out), not after the whole run."""
    (tmp_path / "file").write_text("not a folder")
    out = tmp_path / "demo"
    for args, sentence in (
            (("--size", 33), "--size must be even (the demo video's codec needs even sides), got 33."),
            (("--memory", -1), "memory must be"),
            (("--frames", 2), "--frames 3 or more"),
            (("--out", tmp_path / "file"), f"--out {tmp_path / 'file'} is a file; give a folder for the demo's "
                                           "outputs.")):
        code, _, err = run_main(monkeypatch, capsys, "demo", "--ckpt", tiny_ckpt, "--out", out, *args)
        assert code == 1 and sentence in err and err.count("\n") == 1, (args, err)
        assert not out.exists(), args


def test_an_interrupted_demo_leaves_no_demo_behind(tiny_ckpt, tmp_path):
    """A run stopped midway (Ctrl-C, here in the progress callback) removes what it wrote, and what the
    run before it left: no folder of a half demo, nor one of two runs' files."""
    from coordgan.demo import OUTPUTS, DemoOptions, run_demo
    from export.cache import encoder_onnx
    from runtime.propagation.model import open_model

    def stop_at_frame_2(done, total):
        if done >= 2:
            raise KeyboardInterrupt

    out = tmp_path / "demo"
    encoder = encoder_onnx(tiny_ckpt, cache=tmp_path / "export")
    with open_model(str(encoder), backend="onnxruntime", device="cpu") as model:
        run_demo(model, out, DemoOptions(frames=4, size=32))
        assert all((out / name).exists() for name in OUTPUTS)
        with pytest.raises(KeyboardInterrupt):
            run_demo(model, out, DemoOptions(frames=6, size=32), on_frame=stop_at_frame_2)
    assert list(out.iterdir()) == []


@pytest.mark.skipif(not SHIPPED_CKPT.is_file(), reason="the shipped checkpoint is not in this checkout")
def test_shipped_checkpoint_beats_the_identity_baseline(tmp_path, monkeypatch, capsys):
    out = tmp_path / "demo"
    code, _, err = run_main(monkeypatch, capsys, "demo", "--out", out, "--frames", 24)
    assert code in (0, None), err
    result = json.loads((out / "demo.json").read_text())
    assert result["propagated"]["J_mean"] > result["identity baseline"]["J_mean"] + 0.1, result


def test_demo_never_deletes_files_no_demo_made(tiny_ckpt, tmp_path, monkeypatch, capsys):
    """`coordgan demo --out .` in a project deleted its masks/ (any gt/, identity/, masks/ was removed);
    now only what a demo made goes (its marker, written first, says so), anything else is refused."""
    from coordgan.demo import MARKER, OUTPUTS, DemoOptions, run_demo
    from export.cache import encoder_onnx
    from runtime.propagation.model import open_model

    project = tmp_path / "project"
    (project / "masks").mkdir(parents=True)
    (project / "masks" / "00000.png").write_bytes(b"the user's mask")
    (project / "gt").mkdir()  # empty: no loss
    code, stdout, err = run_main(monkeypatch, capsys, "demo", "--ckpt", tiny_ckpt, "--out", project, "--frames", 4,
                                 "--size", 32)
    assert code == 1 and err.count("\n") == 1, err
    assert err.strip() == (f"Error: --out {project} already holds the folder masks, which no earlier demo made; give "
                           "another --out (a demo replaces demo.json, faces.mp4, gt, identity, masks, overlay.mp4, "
                           "strip.png in it).")
    assert (project / "masks" / "00000.png").read_bytes() == b"the user's mask"
    assert sorted(p.name for p in project.iterdir()) == ["gt", "masks"]  # refused before the export, too
    (project / "masks" / "00000.png").unlink()
    (project / "strip.png").write_bytes(b"the user's picture")
    encoder = encoder_onnx(tiny_ckpt, cache=tmp_path / "export")
    with open_model(str(encoder), backend="onnxruntime", device="cpu") as model:
        with pytest.raises(CoordGANError, match=r"already holds the file strip.png, which no earlier demo made"):
            run_demo(model, project, DemoOptions(frames=4, size=32))
        assert (project / "strip.png").read_bytes() == b"the user's picture"
        (project / "strip.png").unlink()
        run_demo(model, project, DemoOptions(frames=4, size=32))  # empty folders of those names: no loss
        assert all((project / name).exists() for name in OUTPUTS) and (project / MARKER).is_file()
        run_demo(model, project, DemoOptions(frames=5, size=32))  # the demo's own: replaced
        assert len(list((project / "masks").glob("*.png"))) == 5
        # a folder of a demo from before the marker is known by its demo.json
        (project / MARKER).unlink()
        run_demo(model, project, DemoOptions(frames=4, size=32))
        assert len(list((project / "masks").glob("*.png"))) == 4
