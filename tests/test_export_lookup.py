"""The lookup as a custom-domain ONNX node: the contract TensorRT's parser maps to the plugin."""

import subprocess
import sys

import onnx
import pytest

from export.lookup_onnx import lookup_model, write_lookup_model
from runtime.errors import CoordGANError


def test_node_contract():
    model = lookup_model(8, tau=0.02, mode="topk", k=16)
    onnx.checker.check_model(model)
    (node,) = model.graph.node
    assert (node.domain, node.op_type) == ("coordgan", "CorrLookup")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["tau"] == pytest.approx(0.02) and attrs["mode"] == b"topk" and attrs["k"] == 16
    assert attrs["plugin_namespace"] == b"coordgan" and attrs["plugin_version"] == b"1"
    assert [i.name for i in model.graph.input] == ["query", "ref_maps", "ref_probs"]
    assert [o.name for o in model.graph.output] == ["probs", "labels"]
    dims = [d.dim_value or d.dim_param for d in model.graph.input[2].type.tensor_type.shape.dim]
    assert dims == ["batch", "refs", 8, "hk", "wk"]  # C is fixed, the rest dynamic
    assert model.graph.output[1].type.tensor_type.elem_type == onnx.TensorProto.INT32
    assert {o.domain: o.version for o in model.opset_import}["coordgan"] == 1


def test_k_only_in_topk_and_fp16_inputs():
    (node,) = lookup_model(4, mode="soft", fp16=True).graph.node
    assert {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}["k"] == 0
    model = lookup_model(4, fp16=True)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


@pytest.mark.parametrize("kwargs, message", [
    (dict(classes=65), "1 to 64 classes"),
    (dict(classes=8, mode="nearest"), "mode must be one of"),
    (dict(classes=8, tau=0.0), "tau must be a finite number > 0, got 0.0"),
    (dict(classes=8, mode="topk", k=0), "The top-k count .* must be a positive integer, got 0"),
    (dict(classes=8, mode="topk", k=65), "topk keeps 1 to 64"),
    (dict(classes=8, mode="soft", k=5), "only used with mode topk"),
])
def test_bad_attributes(kwargs, message):
    with pytest.raises(CoordGANError, match=message):
        lookup_model(**kwargs)


def test_cli_writes_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "corr_lookup.onnx"
    cmd = [sys.executable, "-c", "import sys; sys.argv = ['coordgan', *sys.argv[1:]]; "
           "from coordgan.cli import main; main()", "export", "lookup", "--out", str(out), "--classes", "8"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert onnx.load(out).graph.node[0].op_type == "CorrLookup"
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and "exists; pass --overwrite" in again.stderr and "Traceback" not in again.stderr
    with pytest.raises(CoordGANError, match="is not a directory"):
        write_lookup_model(tmp_path / "missing" / "x.onnx", 8)


def test_cli_refuses_k_without_topk(tmp_path, monkeypatch, capsys):
    """`--k 5` without `--mode topk` wrote a soft lookup with k = 0, silently."""
    from cli_helpers import run_main

    out = tmp_path / "corr_lookup.onnx"
    for mode in ("soft", "hard"):
        code, _, err = run_main(monkeypatch, capsys, "export", "lookup", "--out", out, "--classes", 8, "--k", 5,
                                "--mode", mode)
        assert code == 1 and err == (f"Error: --k sets the neighbours of --mode topk; give --mode topk or drop --k "
                                     f"(mode is {mode}).\n")
    assert not out.exists()
    code, _, err = run_main(monkeypatch, capsys, "export", "lookup", "--out", out, "--classes", 8, "--k", 5,
                            "--mode", "topk")
    assert code == 0, err
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in onnx.load(out).graph.node[0].attribute}
    assert attrs["mode"] == b"topk" and attrs["k"] == 5


def test_engine_profile_of_the_lookup_graph(tmp_path):
    """`export trt` builds corr_lookup.onnx beside the models: refs 1..max_refs, the export's grid fixed."""
    from export.tensorrt_build import EngineOptions, model_files, profile_ranges

    path = write_lookup_model(tmp_path / "corr_lookup.onnx", 8)
    manifest = {"config": {"base_size": 32}, "models": {"encoder": {"file": "encoder.onnx"}}}
    assert model_files(tmp_path, manifest) == {"encoder": "encoder.onnx", "corr_lookup": "corr_lookup.onnx"}
    ranges = profile_ranges(path, manifest, EngineOptions(min_batch=1, opt_batch=2, max_batch=4, max_refs=3))
    grid = (32, 32, 32)
    assert ranges["query"] == [(1, 2, 4), (2, 2, 2), grid, grid]
    assert ranges["ref_maps"] == [(1, 2, 4), (1, 3, 3), (2, 2, 2), grid, grid]
    assert ranges["ref_probs"] == [(1, 2, 4), (1, 3, 3), (8, 8, 8), grid, grid]


def test_engine_profile_refuses_an_unknown_axis(tmp_path):
    from export.tensorrt_build import EngineOptions, profile_ranges

    model = lookup_model(4)
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "height"
    path = tmp_path / "odd.onnx"
    onnx.save(model, str(path))
    with pytest.raises(CoordGANError, match="axis 'height'"):
        profile_ranges(path, {"config": {"base_size": 32}}, EngineOptions())


def test_cli_writes_into_an_export_directory(tmp_path):
    """--out names a folder unless it ends in .onnx: an existing one, or one made for it (`--out exported/`
    as the README writes it, before any export)."""
    for folder in (tmp_path, tmp_path / "exported"):
        result = subprocess.run([sys.executable, "-m", "coordgan.cli", "export", "lookup", "--out", f"{folder}/",
                                 "--classes", "8"], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert onnx.load(str(folder / "corr_lookup.onnx")).graph.node[0].op_type == "CorrLookup"
    refused = subprocess.run([sys.executable, "-m", "coordgan.cli", "export", "lookup", "--out", str(tmp_path / "no"),
                              "--classes", "100"], capture_output=True, text=True)
    assert refused.returncode == 1 and "1 to 64 classes" in refused.stderr
    assert not (tmp_path / "no").exists()  # a refused op makes no folder
