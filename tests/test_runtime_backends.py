"""Runtime backends: torch-free imports, artifact routing, real ONNX Runtime sessions, input checks."""

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from runtime.backends import backend_for, open_backend
from runtime.backends.triton_backend import TritonBackend, parse_address
from runtime.errors import CoordGANError
from runtime.propagation.preprocess import resize_frames, to_unit_range


def test_runtime_imports_without_torch():
    code = (
        "import sys, pkgutil, importlib; sys.modules['torch'] = None\n"
        "import runtime\n"
        "for m in pkgutil.walk_packages(runtime.__path__, 'runtime.'):\n"
        "    importlib.import_module(m.name)\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.parametrize("artifact, kind", [("m/encoder.onnx", "onnxruntime"), ("e.plan", "tensorrt"),
                                            ("x.engine", "tensorrt"), ("triton://h:8001/enc", "triton"),
                                            ("triton+http://h:8000/enc", "triton")])
def test_backend_follows_from_the_artifact(artifact, kind):
    assert backend_for(artifact) == kind


def test_unknown_artifact_and_backend_are_one_sentence_errors(tmp_path):
    with pytest.raises(CoordGANError, match="Cannot tell the backend"):
        backend_for("model.bin")
    with pytest.raises(CoordGANError, match="Unknown backend 'tflite'"):
        open_backend("model.onnx", backend="tflite")
    with pytest.raises(CoordGANError, match="does not exist"):
        open_backend(tmp_path / "missing.onnx")


def test_triton_urls():
    """One reading of a Triton address, for the backend (which needs a model in it) and the load test."""
    assert parse_address("triton://localhost:8001/coordgan_encoder") == ("grpc", "localhost:8001", "coordgan_encoder",
                                                                         "")
    assert parse_address("triton+http://h:8000/m@2") == ("http", "h:8000", "m", "2")
    assert parse_address("http://h:8000/m") == ("http", "h:8000", "m", "")
    with pytest.raises(CoordGANError, match="not a Triton server address"):
        parse_address("ftp://h:8000/m")
    with pytest.raises(CoordGANError, match="names no model"):
        TritonBackend("triton://h:8001")


def test_triton_backend_without_a_server_says_so():
    pytest.importorskip("tritonclient.http")
    with pytest.raises(CoordGANError, match="Cannot reach a Triton server"):
        open_backend("triton+http://127.0.0.1:9/coordgan_encoder")


def write_affine(path, scale: float) -> None:
    """y = scale x + 1 with a dynamic batch."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    consts = [helper.make_tensor("a", TensorProto.FLOAT, [1], [scale]),
              helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])]
    graph = helper.make_graph([helper.make_node("Mul", ["x", "a"], ["t"]), helper.make_node("Add", ["t", "one"], ["y"])],
                              "affine", [x], [y], consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


@pytest.fixture()
def affine_onnx(tmp_path):
    """y = 2x + 1 with a dynamic batch: a real model for a real ONNX Runtime session."""
    path = tmp_path / "affine.onnx"
    write_affine(path, 2.0)
    return path


def test_ort_backend_runs_and_describes(affine_onnx):
    with open_backend(affine_onnx, threads=1) as backend:
        assert backend.device == "cpu"
        assert [s.name for s in backend.inputs] == ["x"] and backend.inputs[0].shape == (None, 3)
        for batch in (1, 5):
            x = np.random.default_rng(batch).standard_normal((batch, 3)).astype(np.float32)
            assert np.allclose(backend.run({"x": x})["y"], 2 * x + 1)
        assert "onnxruntime on cpu" in backend.describe()


def test_ort_backend_checks_feeds(affine_onnx):
    backend = open_backend(affine_onnx)
    with pytest.raises(CoordGANError, match="takes inputs x float32"):
        backend.run({"image": np.zeros((1, 3), np.float32)})
    with pytest.raises(CoordGANError, match="must be float32, got float64"):
        backend.run({"x": np.zeros((1, 3))})
    with pytest.raises(CoordGANError, match=r"must have shape \[\?,3\], got \[1, 4\]"):
        backend.run({"x": np.zeros((1, 4), np.float32)})


def test_ort_cuda_request_without_a_gpu_is_one_quiet_sentence(affine_onnx, capfd):
    from runtime.backends.ort_backend import _gpu_driver_present

    if _gpu_driver_present():
        pytest.skip("an NVIDIA driver is present; the CUDA provider may load here")
    with pytest.raises(CoordGANError, match="CUDA execution provider"):
        open_backend(affine_onnx, device="cuda")
    open_backend(affine_onnx)  # auto: quietly CPU
    assert "Failed to" not in capfd.readouterr().err  # no provider-fallback noise from ORT


def test_corrupt_onnx_file_is_one_sentence(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    with pytest.raises(CoordGANError, match="ONNX Runtime cannot load"):
        open_backend(bad)


def test_ort_load_error_keeps_its_cause_without_cpp_frames(affine_onnx, tmp_path):
    """ORT's message puts the path and a C++ frame (a source location and a whole signature) before the
    cause; the first 200 characters of it held no cause. A model of an IR version newer than this ONNX
    Runtime reads (what the newer `onnx` package writes by default) says what to do."""
    model = onnx.load(affine_onnx)
    model.ir_version = 99
    path = tmp_path / ("a-long-folder-name-" * 4) / "newer.onnx"
    path.parent.mkdir()
    onnx.save(model, path)
    with pytest.raises(CoordGANError) as info:
        open_backend(path)
    message = str(info.value)
    assert message.startswith(f"ONNX Runtime cannot load {path}: Unsupported model IR version: 99, max supported "
                              "IR version: "), message
    assert "re-save the model at IR version" in message and message.count(str(path)) == 1
    assert not any(noise in message for noise in (".cc:", "onnxruntime::", "[ONNXRuntimeError]", "\n")), message


def test_openvino_backend_runs_describes_and_checks_feeds(affine_onnx, tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    monkeypatch.setenv("COORDGAN_CACHE", str(tmp_path / "cache"))
    with open_backend(affine_onnx, backend="openvino", threads=1) as backend:
        assert backend.device == "cpu" and [(s.name, s.shape) for s in backend.inputs] == [("x", (None, 3))]
        assert backend.compiled.get_property("INFERENCE_PRECISION_HINT").to_string() == "f32"
        assert backend.compiled.get_property("INFERENCE_NUM_THREADS") == 1
        for batch in (1, 5):
            x = np.random.default_rng(batch).standard_normal((batch, 3)).astype(np.float32)
            assert np.allclose(backend.run({"x": x})["y"], 2 * x + 1)
        assert backend.describe().startswith("openvino on cpu: (x float32[?,3]) -> (y float32[?,3])")
        with pytest.raises(CoordGANError, match=r"must have shape \[\?,3\], got \[1, 4\]"):
            backend.run({"x": np.zeros((1, 4), np.float32)})
    with pytest.raises(CoordGANError, match="The OpenVINO backend runs on the CPU"):
        open_backend(affine_onnx, backend="openvino", device="cuda")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    with pytest.raises(CoordGANError, match=f"OpenVINO cannot load {bad}: Unable to read the model") as info:
        open_backend(bad, backend="openvino")
    assert not any(noise in str(info.value) for noise in ("\n", "Exception from", ".cpp:", "Available frontends"))
    (tmp_path / "cache-is-a-file").write_text("")
    monkeypatch.setenv("COORDGAN_CACHE", str(tmp_path / "cache-is-a-file"))  # no cache folder: compiled each time
    with open_backend(affine_onnx, backend="openvino") as backend:
        assert np.allclose(backend.run({"x": np.ones((1, 3), np.float32)})["y"], 3.0)


def test_openvino_cache_follows_the_file_not_its_path(tmp_path, monkeypatch):
    """OpenVINO keys a model compiled from a path by the path: an export rewritten in place must not be
    served from the old model's blob."""
    pytest.importorskip("openvino")
    monkeypatch.setenv("COORDGAN_CACHE", str(tmp_path / "cache"))
    path, x = tmp_path / "model.onnx", np.ones((1, 3), np.float32)
    for scale in (2.0, 3.0, 2.0):
        write_affine(path, scale)
        with open_backend(path, backend="openvino") as backend:
            assert np.allclose(backend.run({"x": x})["y"], scale + 1)
    folders = sorted((tmp_path / "cache" / "openvino").iterdir())
    assert len(folders) == 2 and all(any(f.glob("*.blob")) for f in folders)  # compiled once per content


def test_auto_on_an_engine_or_address_is_that_backend():
    pytest.importorskip("tritonclient.http")
    with pytest.raises(CoordGANError, match="Cannot reach a Triton server"):
        open_backend("triton+http://127.0.0.1:9/coordgan_encoder", backend="auto")


def test_preprocess_matches_training_scaling():
    frames = np.random.default_rng(0).integers(0, 256, (2, 40, 60, 3), dtype=np.uint8)
    small = resize_frames(frames, 32)
    assert small.shape == (2, 32, 32, 3) and small.dtype == np.uint8
    x = to_unit_range(small)
    assert x.shape == (2, 3, 32, 32) and x.dtype == np.float32
    assert np.allclose(x, small.transpose(0, 3, 1, 2) / 127.5 - 1, atol=1e-6)
    with pytest.raises(CoordGANError, match="uint8 RGB"):
        resize_frames(frames.astype(np.float32), 32)
