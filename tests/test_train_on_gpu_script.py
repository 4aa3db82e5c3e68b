"""checkpoints/train_on_gpu.sh in its CPU mode, so that the one-call GPU run cannot rot between lent
sessions: every stage runs, $OUT gets what it promises, and a call cut off midway still returns a
checkpoint that loads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from coordgan.checkpoint import load

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "checkpoints" / "train_on_gpu.sh"


def _env(tmp_path: Path, **extra) -> dict:
    return {**os.environ, "OUT": str(tmp_path / "out"), "WORK": str(tmp_path / "work"), "PY": sys.executable,
            **extra}


def test_cpu_mode_trains_scores_and_returns_the_files(tmp_path):
    done = subprocess.run(["bash", str(SCRIPT), "--cpu", "30"], env=_env(tmp_path), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = tmp_path / "out"
    names = sorted(p.name for p in out.iterdir())
    assert names == ["encoder.safetensors", "generator.safetensors", "generator.state.safetensors",
                     "logs.tar.gz", "run.log", "summary.json"]  # the device returns at most 8 files
    model = load(out / "encoder.safetensors")
    assert model.config.name == "tiny" and {"g_ema", "e"} <= set(model.networks)
    assert set(load(out / "generator.safetensors").networks) == {"g", "g_ema", "d", "d_patch"}
    with tarfile.open(out / "logs.tar.gz") as tar:
        members = {Path(n).as_posix().removeprefix("./") for n in tar.getnames()}
        scores = {name: json.load(tar.extractfile(f"./{name}")) for name in ("eval.json", "demo/demo.json")}
    assert {"generator/train.log", "generator/log.jsonl", "encoder/train.log", "eval.json", "eval.png",
            "demo/demo.json", "demo/strip.png"} <= members
    assert any(m.startswith("generator/samples/") for m in members)  # the grid written at the time budget
    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"] == "cpu" and 0 < summary["minutes"] < 5
    for run, ckpt in (("generator", "generator.safetensors"), ("encoder", "encoder.safetensors")):
        trained = load(out / ckpt).metadata["trained"]  # the training loop's own tally, in the checkpoint
        assert summary[run]["steps"] == trained["steps"] >= 1 and summary[run]["images_per_s"] > 0
        assert summary[run]["images_seen"] == trained["images_seen"]
    ev, demo = scores["eval.json"], scores["demo/demo.json"]  # the summary reports the stages' own scores
    assert summary["eval_propagation"]["margin_points"] == round(100 * (ev["miou"] - ev["identity_miou"]), 2)
    assert summary["demo"]["identity_J_mean"] == demo["identity baseline"]["J_mean"]
    log = (out / "run.log").read_text()
    assert "stopped at the time budget" in log and "r1 0.0512" in log  # ADA's 0.0002 * 32^2 / 4
    assert "failed" not in log and "ended with exit" not in log  # every stage ran through


def test_a_call_cut_off_midway_still_returns_a_checkpoint(tmp_path):
    proc = subprocess.Popen(["bash", str(SCRIPT), "--cpu", "60"], env=_env(tmp_path, SNAPSHOT_S="1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    got = tmp_path / "out" / "generator.safetensors"
    try:
        deadline = time.monotonic() + 120
        while not got.is_file() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # as a device call's time-out ends it: no trap runs
        proc.wait()
    if not got.is_file():
        pytest.fail("no generator checkpoint reached OUT while the generator trained")
    assert set(load(got).networks) == {"g", "g_ema", "d", "d_patch"}
    assert not (tmp_path / "out" / "encoder.safetensors").exists()  # cut off before the encoder
