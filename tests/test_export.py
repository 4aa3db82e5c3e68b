"""`coordgan export`: ONNX export of the tiny preset, verification, refusals, TensorRT entry point.

Real components throughout: the dynamo exporter, the ONNX checker, ONNX Runtime (CPU) compared
with the PyTorch models. Exports run in-process through the Typer sub-app (CliRunner) to save the
interpreter start; user-error output is checked through a real subprocess.
"""

import dataclasses
import importlib.util
import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from PIL import Image
from typer.testing import CliRunner

from coordgan.checkpoint import save
from coordgan.cli.export import app
from coordgan.config import PRESETS
from coordgan.data.synthetic_faces import make_sequence
from coordgan.models import build
from export import graph_tools
from export.onnx_export import ExportOptions, export_onnx
from export.verify import FP16_BOUNDS, FP32_BOUNDS, make_inputs, verify_directory
from runtime.errors import CoordGANError
from runtime.fileio import sha256_file

TINY = PRESETS["tiny"]
runner = CliRunner()


def export_cli(*args):
    result = runner.invoke(app, ["onnx", *map(str, args)])
    return result


def run_cli(*args):
    """`coordgan export ARGS` in a fresh interpreter, with the CLI's error handling."""
    code = "import sys; sys.argv = ['coordgan', 'export', *sys.argv[1:]]; from coordgan.cli import main; main()"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def session(path):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    return {k: v.eval() for k, v in build(TINY, which=("g", "e")).items()}


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory, nets):
    return save(tmp_path_factory.mktemp("ck") / "tiny.safetensors", TINY, nets)


@pytest.fixture(scope="module")
def generator_only_ckpt(tmp_path_factory):
    return save(tmp_path_factory.mktemp("ckg") / "tiny-g.safetensors", TINY, build(TINY, which=("g",)))


@pytest.fixture(scope="module")
def fp32_export(tmp_path_factory, tiny_ckpt):
    out = tmp_path_factory.mktemp("exp") / "fp32"
    result = export_cli(tiny_ckpt, "--out", out)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out, result.output


@pytest.fixture(scope="module")
def uint8_export(tmp_path_factory, tiny_ckpt):
    """--only encoder --uint8-input, over an existing directory (--overwrite)."""
    out = tmp_path_factory.mktemp("exp") / "uint8"
    out.mkdir()
    (out / "stale.onnx").write_text("from an earlier export")
    result = export_cli(tiny_ckpt, "--out", out, "--only", "encoder", "--uint8-input", "--overwrite")
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out


@pytest.fixture(scope="module")
def fp16_z_export(tmp_path_factory, tiny_ckpt):
    out = tmp_path_factory.mktemp("exp") / "fp16-z"
    result = export_cli(tiny_ckpt, "--out", out, "--fp16", "--generator-input", "z")
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out, result.output


# -- what an export directory holds ------------------------------------------------------------

def test_help_starts_without_torch_or_onnx():
    code = ("import sys; sys.modules['torch'] = None; sys.modules['onnx'] = None; "
            "sys.argv = ['coordgan', 'export', '--help']; from coordgan.cli import main; main()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert all(cmd in result.stdout for cmd in ("onnx", "verify", "trt", "lookup"))


def test_export_writes_models_and_manifest(fp32_export, tiny_ckpt):
    out, output = fp32_export
    assert sorted(p.name for p in out.iterdir()) == ["encoder.onnx", "generator.onnx", "manifest.json"]
    assert not list(out.parent.glob(".fp32.*"))  # no staging leftovers
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["preset"] == "tiny"
    assert manifest["config"] == json.loads(json.dumps(dataclasses.asdict(TINY)))
    assert manifest["checkpoint"]["sha256"] == sha256_file(tiny_ckpt)
    assert manifest["checkpoint"]["path"] == str(tiny_ckpt.absolute())
    assert manifest["opset"] == 18 and manifest["fp16"] is False
    assert manifest["noise"] == "const, seed 0x5EED"
    assert {"torch", "onnx", "onnxruntime", "coordgan-deploy"} <= set(manifest["tool_versions"])
    b, d, n = TINY.base_size, TINY.style_dim, TINY.n_latent
    enc, gen = manifest["models"]["encoder"], manifest["models"]["generator"]
    assert enc["inputs"] == [{"name": "image", "shape": ["batch", 3, b, b], "dtype": "float32"}]
    assert enc["outputs"] == [{"name": "corr_map", "shape": ["batch", 2, b, b], "dtype": "float32"},
                              {"name": "w_struct", "shape": ["batch", d], "dtype": "float32"},
                              {"name": "w_texture", "shape": ["batch", n, d], "dtype": "float32"}]
    assert [i["name"] for i in gen["inputs"]] == ["w_struct", "w_texture"]
    assert gen["inputs"][1]["shape"] == ["batch", n, d]
    assert gen["outputs"][0] == {"name": "image", "shape": ["batch", 3, TINY.size, TINY.size], "dtype": "float32"}
    # the verification ran inside the command and printed its tables
    assert "ONNX nodes by op type" in output and "Conv" in output and "verified" in output


def test_metadata_props_carry_the_manifest(fp32_export):
    out, _ = fp32_export
    manifest = json.loads((out / "manifest.json").read_text())
    for name, entry in manifest["models"].items():
        meta = graph_tools.read_metadata(onnx.load(str(out / entry["file"])))
        assert meta["coordgan.checkpoint"]["sha256"] == manifest["checkpoint"]["sha256"]
        assert meta["coordgan.config"] == manifest["config"]
        assert meta["coordgan.noise"] == manifest["noise"] and meta["coordgan.fp16"] is False
        assert meta["coordgan.model"]["inputs"] == entry["inputs"]
        assert meta["coordgan.model"]["name"] == name


def test_graphs_are_deployment_shaped(fp32_export):
    out, _ = fp32_export
    for name in ("encoder", "generator"):
        path = out / f"{name}.onnx"
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.load(str(path))
        assert graph_tools.control_flow_nodes(model) == []
        for value in list(model.graph.input) + list(model.graph.output):
            assert value.type.tensor_type.shape.dim[0].dim_param == "batch"
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        bad, _ = graph_tools.significant_unfolded(inferred)
        assert bad == []
        assert not any(n.metadata_props for n in model.graph.node)  # exporter debug info stripped
    ops = graph_tools.op_counts(onnx.load(str(out / "encoder.onnx")))
    assert ops["Gemm"] >= 2 and "MatMul" not in ops  # warp MLP as plain GEMMs


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_onnx_runtime_matches_pytorch_at_any_batch(fp32_export, nets, batch):
    out, _ = fp32_export
    enc, gen = session(out / "encoder.onnx"), session(out / "generator.onnx")
    rng = np.random.default_rng(batch)
    image = rng.uniform(-1, 1, (batch, 3, 32, 32)).astype(np.float32)
    corr, w_s, w_t = enc.run(None, {"image": image})
    with torch.no_grad():
        ws_ref, wt_ref = nets["e"](torch.from_numpy(image))
        corr_ref = nets["g"].warp(ws_ref)
    assert corr.shape == (batch, 2, 32, 32)
    assert np.abs(corr - corr_ref.numpy()).max() <= FP32_BOUNDS["corr_map"]
    assert np.abs(w_s - ws_ref.numpy()).max() < 1e-4 and np.abs(w_t - wt_ref.numpy()).max() < 1e-4
    img, corr_g = gen.run(None, {"w_struct": w_s, "w_texture": w_t})
    with torch.no_grad():
        img_ref, corr_g_ref = nets["g"](torch.from_numpy(w_t), torch.from_numpy(w_s), input_is_w=True,
                                        noise_mode="const")
    assert np.abs(img - img_ref.numpy()).max() <= FP32_BOUNDS["image"]
    assert np.abs(corr_g - corr_g_ref.numpy()).max() <= FP32_BOUNDS["corr_map"]


# -- variants -------------------------------------------------------------------------------------

def test_uint8_encoder_equals_float_path_on_the_same_frames(uint8_export, fp32_export):
    # --only encoder over an existing directory with --overwrite: the old content is gone
    assert sorted(p.name for p in uint8_export.iterdir()) == ["encoder.onnx", "manifest.json"]
    assert list(json.loads((uint8_export / "manifest.json").read_text())["models"]) == ["encoder"]
    assert sorted(p.name for p in uint8_export.parent.iterdir()) == ["uint8"]  # old copy, staging gone
    frames = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    model = onnx.load(str(uint8_export / "encoder.onnx"))
    assert model.graph.input[0].name == "frames"
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == ["batch", 32, 32, 3]
    got = session(uint8_export / "encoder.onnx").run(None, {"frames": frames})
    image = (frames.astype(np.float32) / 127.5 - 1).transpose(0, 3, 1, 2).copy()
    want = session(fp32_export[0] / "encoder.onnx").run(None, {"image": image})
    for a, b in zip(got, want):
        assert np.abs(a - b).max() < 1e-5


def test_fp16_export_stays_within_its_printed_bounds(fp16_z_export, nets):
    out, output = fp16_z_export
    assert "fp16 measured bounds" in output and "FAIL" not in output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["fp16"] is True
    model = onnx.load(str(out / "encoder.onnx"))
    assert all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for v in model.graph.output)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    halves = sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16)
    assert halves > 0.9 * sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    # the sensitive ops stay in float32
    gen = onnx.shape_inference.infer_shapes(onnx.load(str(out / "generator.onnx")))
    types = {v.name: v.type.tensor_type.elem_type for v in gen.graph.value_info}
    for node in gen.graph.node:
        if node.op_type in ("Sqrt", "Reciprocal", "Tanh", "Sin"):
            assert types.get(node.output[0]) == onnx.TensorProto.FLOAT, node.name
    assert graph_tools.control_flow_nodes(gen) == []
    report = verify_directory(out, encoder=nets["e"], generator=nets["g"], batches=(2,))
    assert report.failures == []
    for model_name, output_name in [("encoder", "corr_map"), ("generator", "corr_map"), ("generator", "image")]:
        assert 0 < report.max_diff(model_name, output_name) <= FP16_BOUNDS[output_name]


def test_coarse_warp_grid_is_an_opt_in_approximation(tmp_path, tiny_ckpt, fp32_export, nets):
    """--warp-grid N: the warping network on an N x N grid, its map upsampled; verified against that
    approximation in PyTorch, recorded in the manifest, and close to the exact map."""
    result = export_cli(tiny_ckpt, "--out", tmp_path / "fast", "--only", "encoder", "--warp-grid", 16,
                        "--verify-batches", 2)
    assert result.exit_code == 0, result.output + repr(result.exception)
    entry = json.loads((tmp_path / "fast" / "manifest.json").read_text())["models"]["encoder"]
    assert entry["warp_grid"] == 16 and "16x16 grid, bilinearly upsampled" in entry["computes"]
    x = make_inputs(entry["inputs"], 2, "random")
    fast = session(tmp_path / "fast" / "encoder.onnx").run(["corr_map"], x)[0]
    exact = session(fp32_export[0] / "encoder.onnx").run(["corr_map"], x)[0]
    assert fast.shape == exact.shape == (2, 2, TINY.base_size, TINY.base_size)
    assert 0 < np.abs(fast - exact).max() < 0.05  # an approximation, a close one on these smooth maps
    for grid, message in ((64, "finer than the model's 32x32 grid"), (1, "--warp-grid must be at least 2")):
        result = export_cli(tiny_ckpt, "--out", tmp_path / f"bad{grid}", "--only", "encoder", "--warp-grid", grid)
        assert isinstance(result.exception, CoordGANError) and message in str(result.exception)
        assert not (tmp_path / f"bad{grid}").exists()


def test_int8_warp_layer_is_an_opt_in_approximation(tmp_path, tiny_ckpt, fp32_export):
    """--int8: the warping network's hidden Gemm in int8 (QDQ, calibrated on the generator's images):
    recorded in the manifest, close to the exact map, W codes untouched, each frame's result
    independent of its batch (a fixed range); the uint8-frame input calibrated on the user's footage
    (other scales than the default's); with --warp-grid too; bad footage said in one sentence."""
    out = tmp_path / "int8"
    result = export_cli(tiny_ckpt, "--out", out, "--only", "encoder", "--int8", "--verify-batches", 2)
    assert result.exit_code == 0, result.output + repr(result.exception)
    entry = json.loads((out / "manifest.json").read_text())["models"]["encoder"]
    assert "mapping network" in entry["int8"]["calibration"] and entry["int8"]["weights"].startswith("int8")
    model = onnx.load(out / "encoder.onnx")
    producer = {o: n for n in model.graph.node for o in n.output}
    int8_weights = {i.name: i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8}
    quantized = [n for n in model.graph.node if n.op_type == "Gemm" and producer.get(n.input[1]) is not None
                 and producer[n.input[1]].op_type == "DequantizeLinear" and producer[n.input[1]].input[0] in int8_weights]
    assert len(quantized) == 1  # the warping network's hidden layer, nothing else
    assert list(int8_weights[producer[quantized[0].input[1]].input[0]].dims) == [TINY.warp_hidden] * 2
    assert [n.op_type for n in model.graph.node].count("QuantizeLinear") == 2  # its input and its Relu's output
    x = make_inputs(entry["inputs"], 4, "fixed")
    names = ["corr_map", "w_struct", "w_texture"]
    fast = session(out / "encoder.onnx").run(names, x)
    exact = session(fp32_export[0] / "encoder.onnx").run(names, x)
    assert 0 < np.abs(fast[0] - exact[0]).max() < 0.05
    for got, want in zip(fast[1:], exact[1:]):
        np.testing.assert_allclose(got, want, atol=1e-5)
    alone = session(out / "encoder.onnx").run(["corr_map"], {k: v[1:2] for k, v in x.items()})[0]
    np.testing.assert_array_equal(alone, fast[0][1:2])
    footage = tmp_path / "footage"  # the user's frames, at another size than the model's
    footage.mkdir()
    for t, frame in enumerate(make_sequence(5, 48, seed=3)[0]):
        Image.fromarray(frame).save(footage / f"{t:05d}.png")
    result = export_cli(tiny_ckpt, "--out", tmp_path / "int8u8", "--only", "encoder", "--int8", "--uint8-input",
                        "--calibration", footage, "--verify-batches", 1)
    assert result.exit_code == 0, result.output + repr(result.exception)
    calibrated = json.loads((tmp_path / "int8u8" / "manifest.json").read_text())["models"]["encoder"]["int8"]
    assert calibrated["calibration"] == "5 structure codes the encoder gives for frames of footage"
    def activation_scales(path):
        graph = onnx.load(path).graph
        inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        return [float(inits[n.input[1]]) for n in graph.node if n.op_type == "QuantizeLinear"]

    assert activation_scales(tmp_path / "int8u8" / "encoder.onnx") != activation_scales(out / "encoder.onnx")
    result = export_cli(tiny_ckpt, "--out", tmp_path / "both", "--only", "encoder", "--int8", "--warp-grid", 16,
                        "--verify-batches", 1)
    assert result.exit_code == 0, result.output + repr(result.exception)
    entry = json.loads((tmp_path / "both" / "manifest.json").read_text())["models"]["encoder"]
    assert entry["warp_grid"] == 16 and "int8" in entry
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.mp4").write_text("not a video")
    # a wrong scale (here the quantized layer's weights read 2x too large) misses the sanity bound
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    scale = next(i for i in model.graph.initializer if i.name == producer[quantized[0].input[1]].input[1])
    scale.CopyFrom(numpy_helper.from_array(2 * numpy_helper.to_array(scale), scale.name))
    onnx.save(model, broken / "encoder.onnx")
    failures = verify_directory(broken, batches=(2,)).failures
    assert failures and all("corr_map" in f for f in failures), failures
    trt = runner.invoke(app, ["trt", str(out)])  # TensorRT takes symmetric int8 only: said before it is looked for
    assert isinstance(trt.exception, CoordGANError) and "holds an --int8 encoder" in str(trt.exception)
    for args, message in ((("--int8", "--fp16"), "Choose one of --int8 and --fp16"),
                          (("--int8", "--only", "generator"), "--int8 applies to the encoder"),
                          (("--calibration", footage), "give --int8 too"),
                          (("--int8", "--calibration", tmp_path / "nowhere.mp4"), "nowhere.mp4 does not exist"),
                          (("--int8", "--calibration", tmp_path / "notes.mp4"), "notes.mp4"),
                          (("--int8", "--calibration", tmp_path / "empty"), "empty")):
        result = export_cli(tiny_ckpt, "--out", tmp_path / "bad", *args)
        assert isinstance(result.exception, CoordGANError) and message in str(result.exception)
        assert not (tmp_path / "bad").exists()


def test_z_input_generator_runs_the_mapping_networks(fp16_z_export, nets):
    out, _ = fp16_z_export
    manifest = json.loads((out / "manifest.json").read_text())
    assert [i["name"] for i in manifest["models"]["generator"]["inputs"]] == ["z_struct", "z_texture"]
    assert manifest["models"]["generator"]["input_space"] == "z"
    rng = np.random.default_rng(1)
    z_s, z_t = (rng.standard_normal((4, TINY.style_dim)).astype(np.float32) for _ in range(2))
    img, corr = session(out / "generator.onnx").run(None, {"z_struct": z_s, "z_texture": z_t})
    with torch.no_grad():
        img_ref, corr_ref = nets["g"](torch.from_numpy(z_t), torch.from_numpy(z_s), noise_mode="const")
        img_w, _ = nets["g"](torch.from_numpy(z_t), torch.from_numpy(z_s), input_is_w=True, noise_mode="const")
    # fp16 model: its own bounds; far from what skipping the mapping networks would give
    assert np.abs(img - img_ref.numpy()).max() <= FP16_BOUNDS["image"]
    assert np.abs(corr - corr_ref.numpy()).max() <= FP16_BOUNDS["corr_map"]
    assert np.abs(img - img_w.numpy()).max() > 10 * FP16_BOUNDS["image"]


# -- refusals -------------------------------------------------------------------------------------

def test_existing_directory_is_refused_without_overwrite(fp32_export, tiny_ckpt):
    out, _ = fp32_export
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(CoordGANError, match="already exists; pass --overwrite"):
        export_onnx(tiny_ckpt, out)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_checkpoint_without_encoder_is_refused(tmp_path, generator_only_ckpt):
    with pytest.raises(CoordGANError, match="has no encoder.*--only generator"):
        export_onnx(generator_only_ckpt, tmp_path / "out")
    with pytest.raises(CoordGANError, match="has no encoder.*train one with `coordgan train-encoder"):
        export_onnx(generator_only_ckpt, tmp_path / "out", ExportOptions(only="encoder"))  # as propagate asks
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["proc", "under-a-file"])
def test_unwritable_destination_is_refused(tmp_path, tiny_ckpt, where):
    if where == "proc":
        out = "/proc/coordgan-export/out"
    else:
        (tmp_path / "afile").write_text("x")
        out = tmp_path / "afile" / "out"
    with pytest.raises(CoordGANError, match="Cannot write to"):
        export_onnx(tiny_ckpt, out, ExportOptions(only="generator"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if where == "proc" else ["afile"])


def test_user_errors_are_one_sentence_without_traceback(tmp_path, fp32_export, generator_only_ckpt):
    for args, needle in [(["onnx", generator_only_ckpt, "--out", fp32_export[0]], "already exists"),
                         (["verify", tmp_path], "no manifest.json")]:
        result = run_cli(*args)
        assert result.returncode == 1
        assert "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and needle in lines[0], result.stderr


# -- verify ---------------------------------------------------------------------------------------

def test_verify_finds_the_checkpoint_through_the_manifest(fp32_export):
    result = runner.invoke(app, ["verify", str(fp32_export[0]), "--batches", "2"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "Backends vs PyTorch" in result.output and "onnxruntime" in result.output and "FAIL" not in result.output


def test_verify_takes_an_engine_beside_its_model_through_the_same_interface(tmp_path, fp32_export, nets):
    """A <model>.plan is checked like the ONNX model where TensorRT runs; here (no TensorRT) a note says so."""
    out = tmp_path / "with-plan"
    shutil.copytree(fp32_export[0], out)
    (out / "encoder.plan").write_bytes(b"an engine built elsewhere")
    report = verify_directory(out, encoder=nets["e"], generator=nets["g"], batches=(1,))
    if importlib.util.find_spec("tensorrt") is None:
        assert report.failures == [] and len(report.notes) == 1
        assert report.notes[0].startswith("encoder.plan was not checked: TensorRT is not installed")
    else:  # a plan that is not one: refused, in a note, by TensorRT itself
        assert "encoder.plan was not checked" in report.notes[0]
    backends = {c.backend for m in report.models.values() for c in m.checks}
    assert "onnxruntime" in backends and backends <= {"onnxruntime", "openvino"}  # the ONNX checked, no engine rows


def test_verify_detects_a_tampered_model(tmp_path, fp32_export, tiny_ckpt):
    out = tmp_path / "tampered"
    shutil.copytree(fp32_export[0], out)
    model = onnx.load(str(out / "encoder.onnx"))
    weight = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    arr = numpy_helper.to_array(weight).copy()
    arr.flat[: arr.size // 10] += 0.05
    weight.CopyFrom(numpy_helper.from_array(arr, weight.name))
    onnx.save(model, str(out / "encoder.onnx"))
    result = runner.invoke(app, ["verify", str(out), "--ckpt", str(tiny_ckpt), "--batches", "1"])
    assert result.exit_code != 0
    assert isinstance(result.exception, CoordGANError) and "encoder" in str(result.exception)
    assert "FAIL" in result.output


def test_verify_refuses_a_different_checkpoint(fp32_export, generator_only_ckpt):
    with pytest.raises(CoordGANError, match="not the one .* was exported from"):
        verify_directory(fp32_export[0], ckpt=generator_only_ckpt)


def test_fixed_and_random_inputs_cover_every_declared_input():
    specs = [{"name": "frames", "shape": ["batch", 4, 4, 3], "dtype": "uint8"},
             {"name": "z_struct", "shape": ["batch", 5], "dtype": "float32"}]
    for case in ("random", "fixed"):
        feeds = make_inputs(specs, 2, case)
        assert feeds["frames"].dtype == np.uint8 and feeds["frames"].shape == (2, 4, 4, 3)
        assert feeds["z_struct"].shape == (2, 5) and feeds["z_struct"].std() > 0


# -- TensorRT ---------------------------------------------------------------------------------------

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed: the missing-TensorRT message cannot be seen")
def test_trt_without_tensorrt_says_so_in_one_sentence(fp32_export):
    result = run_cli("trt", fp32_export[0], "--fp16")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: TensorRT is not installed")
    assert not list(fp32_export[0].glob("*.plan*"))


def _gpu_for_tensorrt():
    if not HAS_TRT:
        return "TensorRT is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    return None


@pytest.mark.tensorrt
@pytest.mark.skipif(_gpu_for_tensorrt() is not None, reason=f"needs TensorRT and a GPU: {_gpu_for_tensorrt()}")
def test_trt_builds_engines_and_reuses_the_timing_cache(tmp_path, fp32_export):
    out = tmp_path / "engines"
    shutil.copytree(fp32_export[0], out)
    cache = tmp_path / "timing.cache"
    args = ["trt", str(out), "--fp16", "--min-batch", "1", "--opt-batch", "2", "--max-batch", "4",
            "--workspace-gb", "1", "--timing-cache", str(cache)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert cache.stat().st_size > 0
    for name in ("encoder", "generator"):
        assert (out / f"{name}.plan").stat().st_size > 0
        sidecar = json.loads((out / f"{name}.plan.json").read_text())
        assert sidecar["profile"] == {"min": 1, "opt": 2, "max": 4} and sidecar["precision"] == "fp16"
        assert sidecar["bindings"]["inputs"][0]["shape"][0] == "batch"
    result = runner.invoke(app, args + ["--only", "encoder"])  # second build reads the cache
    assert result.exit_code == 0, result.output + repr(result.exception)
    # The lookup graph in the directory builds too, with the plugin and the export's grid.
    assert runner.invoke(app, ["lookup", "--out", str(out), "--classes", "8"]).exit_code == 0
    result = runner.invoke(app, args[:2] + ["--max-refs", "3", "--only", "corr_lookup"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    sidecar = json.loads((out / "corr_lookup.plan.json").read_text())
    assert sidecar["bindings"]["inputs"][1]["profile_shapes"]["max"][1] == 3


def test_bfloat16_conversion_for_strongly_typed_tensorrt(fp32_export):
    """TensorRT 11 has no BF16 builder flag: the graph itself must be bfloat16 (opset 22 for Conv)."""
    from onnx.reference import ReferenceEvaluator

    from export.precision import to_bfloat16

    model = onnx.load(str(fp32_export[0] / "encoder.onnx"))
    bf16 = to_bfloat16(model)
    onnx.checker.check_model(bf16, full_check=True)
    assert any(t.data_type == onnx.TensorProto.BFLOAT16 for t in bf16.graph.initializer)
    assert bf16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    image = np.random.default_rng(0).uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32)
    got = ReferenceEvaluator(bf16).run(["corr_map"], {"image": image})[0]
    want = session(fp32_export[0] / "encoder.onnx").run(["corr_map"], {"image": image})[0]
    assert got.dtype == np.float32 and np.abs(got - want).max() < 2e-2
