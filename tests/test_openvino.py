"""OpenVINO as a runtime backend: against PyTorch through `export verify`, the `auto` choice (a real slower
backend is never chosen; the trial is remembered), `propagate --backend openvino`, and a machine without
OpenVINO (the backend skipped with its reason, `auto` on ONNX Runtime)."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from cli_helpers import run_main
from export_helpers import export_tiny
from propagate_helpers import G, frames_with_red, objects, read_outputs, shift_encoder
from runtime.backends import Backend, open_backend
from runtime.backends.auto import choose, open_auto
from runtime.errors import CoordGANError
from runtime.io.masks import write_mask

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return export_tiny(tmp_path_factory.mktemp("openvino-export"))


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Compiled models and remembered trials in the test's own cache."""
    monkeypatch.setenv("COORDGAN_CACHE", str(tmp_path / "cache"))


def test_openvino_matches_pytorch_like_onnx_runtime(exported):
    from export.verify import verify_directory

    report = verify_directory(exported, batches=(1, 3))
    assert report.failures == [] and report.notes == []
    for model in ("encoder", "generator"):
        checks = [c for c in report.models[model].checks if c.backend == "openvino"]
        assert {(c.output, c.case, c.batch) for c in checks} == {
            (c.output, c.case, c.batch) for c in report.models[model].checks if c.backend == "onnxruntime"}
        assert all(c.passed and c.bound is not None for c in checks if c.output in ("corr_map", "image"))
    assert report.max_diff("encoder", "corr_map", "openvino") < 1e-5


class Slowed(Backend):
    """A real backend made slower: every run sleeps first (the interface is all `auto` sees)."""

    def __init__(self, inner: Backend, seconds: float):
        self.inner, self.seconds = inner, seconds
        self.name, self.device = f"slow-{inner.name}", inner.device
        self.inputs, self.outputs = inner.inputs, inner.outputs
        self.closed = False

    def _run(self, feeds):
        time.sleep(self.seconds)
        return self.inner.run(feeds)

    def close(self):
        self.closed = True
        self.inner.close()


@pytest.mark.parametrize("slow", ["onnxruntime", "openvino"])
def test_auto_never_picks_a_slower_backend(exported, slow):
    opened = {name: open_backend(exported / "encoder.onnx", backend=name, device="cpu")
              for name in ("onnxruntime", "openvino")}
    slowed = Slowed(opened[slow], 0.05)
    fast = opened["openvino" if slow == "onnxruntime" else "onnxruntime"]
    chosen = choose([slowed, fast], trial_batch=2)
    assert chosen is fast and slowed.closed
    assert chosen.note.startswith("auto: fastest of ") and f"slow-{slow} " in chosen.note
    assert chosen.note in chosen.describe()
    image = np.zeros((1, 3, 32, 32), np.float32)
    assert chosen.run({"image": image})["corr_map"].shape == (1, 2, 32, 32)  # the chosen one still runs


def test_auto_remembers_its_trial_for_the_file(exported, tmp_path, monkeypatch):
    """The trial is remembered per model file, whatever the batch: a resume with another --batch gets
    the same backend (the other one's bytes would be refused by the folder's fingerprint), and the
    backend not chosen is not even opened."""
    import runtime.backends.openvino_backend as ov_module
    import runtime.backends.ort_backend as ort_module

    first = open_auto(exported / "encoder.onnx", device="cpu", trial_batch=2)
    assert first.name in ("onnxruntime", "openvino") and first.note.endswith("per batch of 2 (trial)")
    if not ort_module.may_get_cuda("cuda"):  # a CPU trial remembered does not answer a request for the GPU
        with pytest.raises(CoordGANError, match="The CUDA execution provider"):
            open_auto(exported / "encoder.onnx", device="cuda")
    other = ort_module.OrtBackend if first.name == "openvino" else ov_module.OpenVINOBackend

    def refuse(*args, **kwargs):
        raise AssertionError(f"{other.name} was opened although the remembered trial chose {first.name}")

    monkeypatch.setattr(other, "__init__", refuse)
    for batch in (2, 5):
        again = open_auto(exported / "encoder.onnx", device="cpu", trial_batch=batch)
        assert again.name == first.name and again.note == first.note.replace("(trial)", "(remembered trial)")
        image = np.zeros((batch, 3, 32, 32), np.float32)
        assert again.run({"image": image})["corr_map"].shape == (batch, 2, 32, 32)
        again.close()
    remembered = list((tmp_path / "cache" / "backends").glob("auto-*.json"))
    assert len(remembered) == 1
    trial = json.loads(remembered[0].read_text())
    assert trial["batch"] == 2 and set(trial["seconds"]) == {"onnxruntime", "openvino"}


def test_auto_refuses_a_missing_file_and_a_bad_device_in_one_sentence(exported, tmp_path):
    open_auto(exported / "encoder.onnx", device="cpu", trial_batch=2).close()  # a trial remembered
    with pytest.raises(CoordGANError, match=r"^ONNX model \S*missing.onnx does not exist\.$"):
        open_auto(tmp_path / "missing.onnx", device="cpu")
    with pytest.raises(CoordGANError, match="device must be auto, cpu or cuda, not .gpu."):
        open_auto(exported / "encoder.onnx", device="gpu")  # not quietly the remembered CPU backend


def test_propagate_backend_choice_is_printed_and_recorded(tmp_path, monkeypatch, capsys):
    """--backend openvino and the default (auto) on a model whose maps are known: the masks are the ones
    ONNX Runtime gives (spread maps: the backends' 1e-7 differences decide no label), and summary.json
    records the backend (auto: with its trial)."""
    encoder = shift_encoder(tmp_path / "right.onnx")
    frames = tmp_path / "frames"
    frames.mkdir()
    for t, frame in enumerate(frames_with_red([0, 16, 32, 48, 64], G)):
        Image.fromarray(frame).save(frames / f"{t:05d}.png")
    write_mask(tmp_path / "ref.png", objects(G), bytes(768))
    masks = {}
    for backend in ("onnxruntime", "openvino", None):
        out = tmp_path / f"out-{backend}"
        args = ["propagate", frames, "--model", encoder, "--ref", tmp_path / "ref.png", "--out", out, "--batch", 2,
                "--device", "cpu"] + (["--backend", backend] if backend else [])
        code, _, err = run_main(monkeypatch, capsys, *args)
        assert code == 0, err
        summary = json.loads((out / "summary.json").read_text())
        masks[backend] = read_outputs(out, 5)[0]
        if backend:
            assert summary["model"].startswith(f"{backend} on cpu: ")
        else:
            assert "(auto: fastest of onnxruntime " in summary["model"] and "per batch of 2 (trial)" in summary["model"]
            assert "auto: fastest of" in err  # the choice is printed
    assert np.array_equal(masks["onnxruntime"], masks["openvino"]) and np.array_equal(masks["onnxruntime"], masks[None])


def test_without_openvino_it_is_skipped_with_the_reason(exported, tmp_path):
    """A fresh interpreter where `import openvino` fails, as on a machine without the extra."""
    code = f"""
import sys; sys.modules["openvino"] = None
from runtime.backends import open_backend
from runtime.errors import CoordGANError
from runtime.propagation.model import open_model
try:
    open_backend({str(exported / "encoder.onnx")!r}, backend="openvino")
except CoordGANError as exc:
    print("error:", exc)
with open_model({str(exported / "encoder.onnx")!r}, device="cpu") as model:
    print("auto:", model.backend.describe())
from runtime.bench.runners import Skip, open_runtime_runner
from runtime.bench.workload import Workload
try:
    open_runtime_runner("openvino", Workload(target="encoder", size=32), onnx_dir={str(exported)!r})
except Skip as exc:
    print("bench: skipped:", exc)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COORDGAN_CACHE": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    install = "OpenVINO is not installed; install it with: pip install 'coordgan-deploy[openvino]'."
    assert lines[0] == f"error: {install}"
    assert lines[1].startswith("auto: onnxruntime on cpu (auto: onnxruntime; openvino skipped: OpenVINO is not "
                               "installed;")
    assert lines[2] == f"bench: skipped: {install[:-1]}"


def test_bench_times_openvino_beside_onnx_runtime(exported, tmp_path):
    from typer.testing import CliRunner

    from coordgan.cli import app

    out = tmp_path / "run.json"
    result = CliRunner().invoke(app, ["bench", "encoder", "--preset", "tiny", "--backends", "ort-cpu,openvino",
                                      "--onnx-dir", str(exported), "--iters", "2", "--warmup", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    rows = {r["backend"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"ort-cpu", "openvino"} and all(r["status"] == "ok" for r in rows.values())
