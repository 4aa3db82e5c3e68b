"""`coordgan triton build` without a server: every config parses as Triton's ModelConfig, its I/O
matches the exported ONNX models, the variants per backend, the refusals, and the batching helper
of the python-backend models.
"""

import importlib.util
import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from tritonclient.grpc.model_config_pb2 import DataType, ModelConfig, ModelInstanceGroup
from typer.testing import CliRunner

from coordgan.cli import app
from export.lookup_onnx import write_lookup_model
from export_helpers import export_tiny
from runtime.errors import CoordGANError
from triton_models import pbtxt
from triton_models.models.base import run_batched
from triton_models.repository import BuildOptions, build_repository

MODELS = ("coordgan_encoder", "coordgan_generator", "coordgan_corr_lookup", "coordgan_frame_labels")


def read_config(path) -> ModelConfig:
    return text_format.Parse(path.read_text(), ModelConfig())


def configs(repo) -> dict[str, ModelConfig]:
    return {p.parent.name: read_config(p) for p in sorted(repo.glob("*/config.pbtxt"))}


def triton_io(tensors) -> list[tuple]:
    return [(t.name, DataType.Name(t.data_type), list(t.dims)) for t in tensors]


def onnx_io(values) -> list[tuple]:
    """(name, Triton type, dims without the batch axis) of ONNX graph inputs/outputs."""
    out = []
    for v in values:
        tt = v.type.tensor_type
        dtype = pbtxt.data_type(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)).name)
        out.append((v.name, dtype, [d.dim_value or -1 for d in tt.shape.dim[1:]]))
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return export_tiny(tmp_path_factory.mktemp("triton-export"))


@pytest.fixture(scope="module")
def with_lookup(tmp_path_factory, exported):
    """The export plus a topk lookup ONNX of 5 classes (what `coordgan export lookup` writes)."""
    directory = tmp_path_factory.mktemp("with-lookup") / "export"
    shutil.copytree(exported, directory)
    write_lookup_model(directory / "corr_lookup.onnx", 5, tau=0.05, mode="topk", k=4)
    return directory


@pytest.mark.parametrize("backend", ["python", "onnxruntime", "openvino"])
def test_configs_parse_and_match_the_onnx_models(tmp_path, exported, backend):
    result = build_repository(exported, tmp_path / "repo", BuildOptions(backend=backend))
    found = configs(result.repo)
    assert set(MODELS) <= set(found) and set(found) <= {*MODELS, "coordgan_video"}
    for name, key in (("coordgan_encoder", "encoder"), ("coordgan_generator", "generator")):
        graph = onnx.load(str(exported / f"{key}.onnx"), load_external_data=False).graph
        config = found[name]
        assert triton_io(config.input) == onnx_io(graph.input)
        assert triton_io(config.output) == onnx_io(graph.output)
        assert config.max_batch_size == 8
        assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
        assert config.dynamic_batching.max_queue_delay_microseconds == 2000
        assert (result.repo / name / "1" / "model.onnx").read_bytes() == (exported / f"{key}.onnx").read_bytes()
        if backend == "onnxruntime":
            assert config.platform == "onnxruntime_onnx"
            assert config.instance_group[0].kind == ModelInstanceGroup.KIND_AUTO
        elif backend == "openvino":  # Triton's OpenVINO backend reads the same model.onnx, on the CPU
            assert config.backend == "openvino" and config.default_model_filename == "model.onnx"
            assert config.instance_group[0].kind == ModelInstanceGroup.KIND_CPU
            assert {k: v.string_value for k, v in config.parameters.items()} == {"NUM_STREAMS": "1",
                                                                                "PERFORMANCE_HINT": "LATENCY"}
        else:
            assert config.backend == "python"
            assert config.instance_group[0].kind == ModelInstanceGroup.KIND_CPU
            assert config.parameters["onnx_file"].string_value == "model.onnx"
            assert _shim_class(result.repo / name) is importlib.import_module(
                f"triton_models.models.{key}").TritonPythonModel
    lookup = found["coordgan_corr_lookup"]
    assert lookup.backend == "python"  # whatever the backend: ONNX Runtime cannot run the CorrLookup op
    assert triton_io(lookup.input) == [("query", "TYPE_FP32", [2, -1, -1]), ("ref_maps", "TYPE_FP32", [-1, 2, -1, -1]),
                                       ("ref_probs", "TYPE_FP32", [-1, -1, -1, -1])]
    assert triton_io(lookup.output) == [("probs", "TYPE_FP32", [-1, -1, -1]), ("labels", "TYPE_INT32", [-1, -1])]
    device = "auto" if backend == "onnxruntime" else "cpu"
    assert {k: v.string_value for k, v in lookup.parameters.items()} == {"tau": "0.01", "mode": "soft", "k": "0",
                                                                        "device": device}
    assert any("ONNX Runtime has no kernel" in n for n in result.notes) == (backend == "onnxruntime")
    assert any("OpenVINO has no kernel" in n for n in result.notes) == (backend == "openvino")
    summary = json.loads((result.repo / "repository.json").read_text())
    assert summary["models"]["coordgan_encoder"] == backend and summary["preset"] == "tiny"


def test_openvino_repository_serves_a_file_openvino_reads_at_every_batch(tmp_path, exported):
    """What Triton's OpenVINO backend does with the model (read <model>/1/model.onnx, compile it for the CPU,
    run batches up to max_batch_size), done with OpenVINO here: the local tritonserver has no OpenVINO
    backend, so the repository itself is not served in this suite."""
    pytest.importorskip("openvino")
    from runtime.backends import open_backend

    repo = build_repository(exported, tmp_path / "repo", BuildOptions(backend="openvino", max_batch=4)).repo
    config = read_config(repo / "coordgan_encoder" / "config.pbtxt")
    with open_backend(repo / "coordgan_encoder" / "1" / config.default_model_filename, backend="openvino") as ov, \
            open_backend(exported / "encoder.onnx", backend="onnxruntime", device="cpu") as ort:
        assert [(s.name, list(s.shape[1:])) for s in ov.inputs] == [(t.name, list(t.dims)) for t in config.input]
        for batch in (1, config.max_batch_size):
            image = np.random.default_rng(batch).uniform(-1, 1, (batch, 3, 32, 32)).astype(np.float32)
            got, want = ov.run({"image": image}), ort.run({"image": image})
            assert np.abs(got["corr_map"] - want["corr_map"]).max() < 1e-5


def _shim_class(model_dir):
    """The TritonPythonModel that <model>/1/model.py exposes, loaded as Triton's stub loads it."""
    spec = importlib.util.spec_from_file_location("shim", model_dir / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TritonPythonModel


def test_ensemble_wires_encoder_into_lookup(tmp_path, exported):
    found = configs(build_repository(exported, tmp_path / "repo", BuildOptions()).repo)
    ensemble = found["coordgan_frame_labels"]
    assert ensemble.platform == "ensemble" and ensemble.max_batch_size == 8
    assert [t.name for t in ensemble.input] == ["image", "ref_maps", "ref_probs"]
    assert triton_io(ensemble.input)[0] == triton_io(found["coordgan_encoder"].input)[0]
    assert triton_io(ensemble.output) == triton_io(found["coordgan_corr_lookup"].output)
    produced = {t.name for t in ensemble.input}
    for step in ensemble.ensemble_scheduling.step:  # in order: each step reads what exists by then
        model = found[step.model_name]
        assert set(step.input_map) == {t.name for t in model.input}
        assert set(step.input_map.values()) <= produced
        assert set(step.output_map) <= {t.name for t in model.output}
        produced |= set(step.output_map.values())
    assert {t.name for t in ensemble.output} <= produced


def test_lookup_onnx_fixes_classes_and_attributes(tmp_path, with_lookup):
    graph = onnx.load(str(with_lookup / "corr_lookup.onnx")).graph
    lookup = configs(build_repository(with_lookup, tmp_path / "repo", BuildOptions()).repo)["coordgan_corr_lookup"]
    assert triton_io(lookup.input) == onnx_io(graph.input)
    assert triton_io(lookup.output) == onnx_io(graph.output)
    assert list(lookup.output[0].dims) == [5, -1, -1]
    attributes = {k: lookup.parameters[k].string_value for k in ("tau", "mode", "k")}
    assert attributes == {"tau": "0.05", "mode": "topk", "k": "4"}


def test_tensorrt_variant_copies_the_plans(tmp_path, with_lookup):
    directory = tmp_path / "export"
    shutil.copytree(with_lookup, directory)
    # The builder only copies plans; their content is TensorRT's business (tested in test_export).
    for name in ("encoder", "generator", "corr_lookup"):
        (directory / f"{name}.plan").write_bytes(f"{name} engine".encode())
    (directory / "encoder.plan.json").write_text(json.dumps({"profile": {"min": 1, "opt": 8, "max": 32}}))
    result = build_repository(directory, tmp_path / "repo", BuildOptions(backend="tensorrt", instances=2))
    found = configs(result.repo)
    for name, key in (("coordgan_encoder", "encoder"), ("coordgan_generator", "generator"),
                      ("coordgan_corr_lookup", "corr_lookup")):
        assert found[name].platform == "tensorrt_plan"
        assert found[name].instance_group[0].kind == ModelInstanceGroup.KIND_GPU
        assert found[name].instance_group[0].count == 2
        assert (result.repo / name / "1" / "model.plan").read_bytes() == f"{key} engine".encode()
    (directory / "encoder.plan.json").write_text(json.dumps({"profile": {"min": 1, "opt": 2, "max": 4}}))
    with pytest.raises(CoordGANError, match="takes batches up to 4, below --max-batch 8"):
        build_repository(directory, tmp_path / "repo2", BuildOptions(backend="tensorrt"))
    (directory / "corr_lookup.plan").unlink()
    result = build_repository(directory, tmp_path / "repo3", BuildOptions(backend="tensorrt", max_batch=4))
    assert configs(result.repo)["coordgan_corr_lookup"].backend == "python"
    assert any("no corr_lookup.plan" in n for n in result.notes)


def test_batching_options(tmp_path, exported):
    found = configs(build_repository(exported, tmp_path / "a", BuildOptions(max_batch=2, kind="gpu")).repo)
    assert list(found["coordgan_encoder"].dynamic_batching.preferred_batch_size) == [2]  # default, capped
    assert found["coordgan_encoder"].parameters["device"].string_value == "cuda"
    found = configs(build_repository(exported, tmp_path / "b", BuildOptions(dynamic_batching=False)).repo)
    assert not found["coordgan_encoder"].HasField("dynamic_batching")
    found = configs(build_repository(exported, tmp_path / "c", BuildOptions(
        preferred_batch=(2, 16), max_batch=16, queue_delay_us=100)).repo)
    assert list(found["coordgan_generator"].dynamic_batching.preferred_batch_size) == [2, 16]
    assert found["coordgan_generator"].dynamic_batching.max_queue_delay_microseconds == 100


def test_uint8_encoder_only_export(tmp_path):
    directory = export_tiny(tmp_path, only="encoder", uint8_input=True)
    result = build_repository(directory, tmp_path / "repo", BuildOptions())
    found = configs(result.repo)
    assert "coordgan_generator" not in found
    assert any("no generator model, so the repository has no coordgan_generator" in n for n in result.notes)
    frame = triton_io(found["coordgan_frame_labels"].input)[0]
    assert frame == ("frames", "TYPE_UINT8", [32, 32, 3]) == triton_io(found["coordgan_encoder"].input)[0]


def test_video_model(tmp_path, exported):
    result = build_repository(exported, tmp_path / "repo", BuildOptions(video_idle_s=5))
    video = read_config(result.repo / "coordgan_video" / "config.pbtxt")
    assert video.name == "coordgan_video" and video.HasField("sequence_batching")
    assert (result.repo / "coordgan_video" / "1" / "model.py").is_file()
    without = build_repository(exported, tmp_path / "repo2", BuildOptions(video=False)).repo
    assert not (without / "coordgan_video").exists()


@pytest.mark.parametrize("options, message", [
    (dict(backend="tf"), "--backend must be one of onnxruntime, openvino, tensorrt, python"),
    (dict(max_batch=0), "--max-batch must be at least 1"),
    (dict(preferred_batch=(4, 16)), "--preferred-batch sizes must be between 1 and --max-batch"),
    (dict(kind="tpu"), "--kind must be one of cpu, gpu, auto"),
    (dict(backend="tensorrt", kind="cpu"), "TensorRT plans run on a GPU only"),
    (dict(backend="openvino", kind="gpu"), "Triton's OpenVINO backend runs on the CPU only"),
    (dict(backend="tensorrt"), "--backend tensorrt needs encoder.plan"),
    (dict(instances=0), "--instances must be at least 1"),
    (dict(tau=0), "tau must be a finite number > 0, got 0"),
])
def test_bad_options_are_refused_before_writing(tmp_path, exported, options, message):
    with pytest.raises(CoordGANError, match=message):
        build_repository(exported, tmp_path / "repo", BuildOptions(**options))
    assert list(tmp_path.iterdir()) == []  # no repository, no staging directory


def test_bad_inputs_are_refused(tmp_path, exported):
    with pytest.raises(CoordGANError, match="is not an export directory: it has no manifest.json"):
        build_repository(tmp_path, tmp_path / "repo")
    broken = tmp_path / "broken"
    shutil.copytree(exported, broken)
    (broken / "generator.onnx").unlink()
    with pytest.raises(CoordGANError, match="names generator.onnx"):
        build_repository(broken, tmp_path / "repo")
    (broken / "corr_lookup.onnx").write_bytes(b"not onnx")
    shutil.copy(exported / "generator.onnx", broken)
    with pytest.raises(CoordGANError, match="corr_lookup.onnx is not a readable ONNX model"):
        build_repository(broken, tmp_path / "repo")
    (broken / "corr_lookup.onnx").unlink()
    data = (exported / "encoder.onnx").read_bytes()
    (broken / "encoder.onnx").write_bytes(data[: len(data) // 2])  # cut off in a copy
    for backend in ("onnxruntime", "python"):
        with pytest.raises(CoordGANError, match="encoder.onnx is not a readable ONNX model"):
            build_repository(broken, tmp_path / "repo", BuildOptions(backend=backend))
    shutil.copy(exported / "generator.onnx", broken / "encoder.onnx")  # readable, but not the encoder
    with pytest.raises(CoordGANError, match="encoder.onnx does not match its manifest"):
        build_repository(broken, tmp_path / "repo")
    repo = build_repository(exported, tmp_path / "repo").repo
    with pytest.raises(CoordGANError, match="already exists; pass --overwrite"):
        build_repository(exported, repo)
    (repo / "stale").mkdir()
    build_repository(exported, repo, BuildOptions(overwrite=True))
    assert not (repo / "stale").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "repo"]


def test_cli_builds_and_reports(tmp_path, exported):
    result = CliRunner().invoke(app, ["triton", "build", "--models", str(exported), "--backend", "onnxruntime",
                                         "--out", str(tmp_path / "repo"), "--max-batch", "4",
                                         "--preferred-batch", "2,4", "--no-video"])
    assert result.exit_code == 0, result.output
    assert "ONNX Runtime has no kernel for coordgan::CorrLookup" in result.output
    for name in MODELS:
        assert name in result.output
    assert list(read_config(tmp_path / "repo" / "coordgan_encoder" / "config.pbtxt")
                .dynamic_batching.preferred_batch_size) == [2, 4]


def test_cli_user_error_is_one_sentence(tmp_path):
    result = subprocess.run([sys.executable, "-m", "coordgan.cli", "triton", "build", "--models", str(tmp_path),
                             "--backend", "python", "--out", str(tmp_path / "repo")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "has no manifest.json" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    assert len((result.stderr + result.stdout).strip().splitlines()) == 1


def test_run_batched_groups_splits_and_isolates_failures():
    calls = []

    def double(feeds):
        calls.append({k: v.shape for k, v in feeds.items()})
        if np.isnan(feeds["x"]).any():
            raise CoordGANError("x contains NaN.")
        return {"y": 2 * feeds["x"]}

    a, b = np.ones((2, 3), np.float32), np.arange(3, dtype=np.float32)[None]
    wide = np.ones((1, 5), np.float32)
    results = run_batched([{"x": a}, {"x": b}, {"x": wide}], double)
    assert calls == [{"x": (3, 3)}, {"x": (1, 5)}]  # same per-item shape: one run
    np.testing.assert_array_equal(results[0]["y"], 2 * a)
    np.testing.assert_array_equal(results[1]["y"], 2 * b)
    np.testing.assert_array_equal(results[2]["y"], 2 * wide)

    bad = np.full((1, 3), np.nan, np.float32)
    results = run_batched([{"x": a}, {"x": bad}, {"x": b}], double)
    assert isinstance(results[1], CoordGANError)
    np.testing.assert_array_equal(results[0]["y"], 2 * a)
    np.testing.assert_array_equal(results[2]["y"], 2 * b)

    results = run_batched([{"x": a, "z": b}], double)
    assert isinstance(results[0], CoordGANError) and "same batch size" in str(results[0])
