"""checkpoints/train_on_gpu.sh in its CPU mode (two configurations side by side), so that the one-call GPU
run cannot rot between lent sessions: every stage of each runs, $OUT gets what it promises (the best
two), and a call cut off midway still returns a checkpoint of each that loads."""

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


def test_cpu_mode_trains_two_configurations_side_by_side_and_returns_the_best_two(tmp_path):
    done = subprocess.run(["bash", str(SCRIPT), "--cpu", "30"], env=_env(tmp_path), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = tmp_path / "out"
    names = sorted(p.name for p in out.iterdir())
    assert names == ["encoder-2.safetensors", "encoder.safetensors", "generator.safetensors",
                     "generator.state.safetensors", "logs.tar.gz", "run.log", "summary.json"]  # the device returns <= 8
    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"] == "cpu" and 0 < summary["minutes"] < 5
    runs = summary["configurations"]
    assert set(runs) == {"base", "chamfer100"} and sorted(summary["ranking"]) == ["base", "chamfer100"]
    assert (runs["base"]["seed"], runs["chamfer100"]["seed"]) == (0, 1)
    best, second = summary["ranking"]
    margins = [runs[n]["eval_propagation"]["margin_points"] for n in (best, second)]
    assert margins == sorted(margins, reverse=True)  # ranked by eval-propagation's margin
    # each file is its configuration's: the Chamfer weight the checkpoint keeps tells them apart
    for file, name in (("encoder.safetensors", best), ("encoder-2.safetensors", second)):
        model = load(out / file)
        assert model.config.name == "tiny" and {"g_ema", "e"} <= set(model.networks)
        assert (model.config.losses.chamfer == 100) == (name == "chamfer100")
        trained = model.metadata["trained"]  # the training loop's own tally, in the checkpoint
        assert runs[name]["encoder"]["steps"] == trained["steps"] >= 1
        assert runs[name]["encoder"]["images_seen"] == trained["images_seen"]
    generator = load(out / "generator.safetensors")
    assert set(generator.networks) == {"g", "g_ema", "d", "d_patch"}
    assert (generator.config.losses.chamfer == 100) == (best == "chamfer100")
    assert runs[best]["generator"]["steps"] == generator.metadata["trained"]["steps"] >= 1
    with tarfile.open(out / "logs.tar.gz") as tar:
        members = {Path(n).as_posix().removeprefix("./") for n in tar.getnames()}
        files = {n: tar.extractfile(f"./{n}").read() for n in members if n.endswith((".json", ".log"))}
    for name in runs:
        assert {f"{name}/generator/train.log", f"{name}/generator/log.jsonl", f"{name}/encoder/train.log",
                f"{name}/eval.json", f"{name}/eval.png", f"{name}/demo/demo.json", f"{name}/demo/strip.png",
                f"{name}/stages.log"} <= members
        assert any(m.startswith(f"{name}/generator/samples/") for m in members)  # the grid at the time budget
        ev, demo = (json.loads(files[f"{name}/{f}"]) for f in ("eval.json", "demo/demo.json"))
        assert runs[name]["eval_propagation"]["margin_points"] == round(100 * (ev["miou"] - ev["identity_miou"]), 2)
        assert runs[name]["demo"]["identity_J_mean"] == demo["identity baseline"]["J_mean"]
        assert runs[name]["meets_bars"] is False  # seconds of CPU training: far from the bars
        for run in ("generator", "encoder"):
            assert "stopped at the time budget" in files[f"{name}/{run}/train.log"].decode()
    assert "loss weights set by --loss: r1=0.0512, chamfer=100" in files["chamfer100/stages.log"].decode()
    log = (out / "run.log").read_text()
    assert "r1 0.0512" in log  # ADA's 0.0002 * 32^2 / 4
    assert "failed" not in log and "ended with exit" not in log and "stopped early" not in log
    # side by side: the second configuration trains its encoder before the first is scored
    assert log.index("chamfer100: encoder against") < log.index("base: eval-propagation")
    assert f"ranked by eval-propagation: {best}, {second}" in log


def test_a_call_cut_off_midway_still_returns_a_checkpoint_per_configuration(tmp_path):
    proc = subprocess.Popen(["bash", str(SCRIPT), "--cpu", "60"], env=_env(tmp_path, SNAPSHOT_S="1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    got = [tmp_path / "out" / f"cfg-{name}.safetensors" for name in ("base", "chamfer100")]
    try:
        deadline = time.monotonic() + 120
        while not all(p.is_file() for p in got) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # as a device call's time-out ends it: no trap runs
        proc.wait()
    if not all(p.is_file() for p in got):
        pytest.fail("no generator checkpoint of each configuration reached OUT while they trained")
    for path in got:
        assert set(load(path).networks) == {"g", "g_ema", "d", "d_patch"}
    assert not (tmp_path / "out" / "encoder.safetensors").exists()  # cut off before any was scored


@pytest.mark.parametrize("configs, says", [
    ("base:0:", "is not NAME:SEED:GENERATOR_LOSSES:ENCODER_LOSSES"),
    ("base:x::", "is not NAME:SEED"),
    ("a:0:: a:1::", "the name a is given twice"),
    ("a:0:: b:0:: c:0:: d:0:: e:0::", "give 1 to 4 configurations"),
])
def test_bad_configurations_are_refused_before_anything_runs(tmp_path, configs, says):
    done = subprocess.run(["bash", str(SCRIPT), "--cpu", "5"], env=_env(tmp_path, CONFIGS=configs),
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and says in done.stderr and not (tmp_path / "out").exists()
