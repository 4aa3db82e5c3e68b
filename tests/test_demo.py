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


def test_demo_writes_every_output(tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    ckpt = save(tmp_path / "tiny.safetensors", PRESETS["tiny"], build(PRESETS["tiny"], which=("g", "e")))
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


@pytest.mark.skipif(not SHIPPED_CKPT.is_file(), reason="the shipped checkpoint is not in this checkout")
def test_shipped_checkpoint_beats_the_identity_baseline(tmp_path, monkeypatch, capsys):
    out = tmp_path / "demo"
    code, _, err = run_main(monkeypatch, capsys, "demo", "--out", out, "--frames", 24)
    assert code in (0, None), err
    result = json.loads((out / "demo.json").read_text())
    assert result["propagated"]["J_mean"] > result["identity baseline"]["J_mean"] + 0.1, result
