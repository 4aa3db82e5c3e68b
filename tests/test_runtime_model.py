"""The runtime's CorrespondenceModel on a real export equals PyTorch, frames in, maps out."""

import numpy as np
import pytest
import torch
from PIL import Image

from coordgan.checkpoint import save
from coordgan.config import PRESETS
from coordgan.models import build
from export.onnx_export import ExportOptions, export_onnx
from runtime.errors import CoordGANError
from runtime.propagation.model import CorrespondenceModel
from runtime.propagation.preprocess import resize_frames, to_unit_range

TINY = PRESETS["tiny"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    nets = {k: v.eval() for k, v in build(TINY, which=("g", "e")).items()}  # its warp init varies the maps
    root = tmp_path_factory.mktemp("rt")
    ckpt = save(root / "tiny.safetensors", TINY, nets)
    out = {}
    for name, uint8 in (("float", False), ("uint8", True)):
        out[name] = export_onnx(ckpt, root / name, ExportOptions(only="encoder", uint8_input=uint8,
                                                                  verify_batches=(1,))).directory / "encoder.onnx"
    return nets, out


def _torch_maps(nets, frames):
    x = torch.from_numpy(to_unit_range(resize_frames(frames, TINY.base_size)))
    with torch.no_grad():
        w_s, _ = nets["e"](x)
        return nets["g"].warp(w_s).numpy()


@pytest.mark.parametrize("variant", ["float", "uint8"])
def test_frames_to_maps_equal_pytorch(exported, variant):
    nets, paths = exported
    rng = np.random.default_rng()
    frames = rng.integers(0, 256, (5, 48, 40, 3), dtype=np.uint8)  # not the model size: resized first
    with CorrespondenceModel(paths[variant], batch=2) as model:
        assert model.size == TINY.base_size and model.uint8_input == (variant == "uint8")
        maps = model.correspondence(frames)
    want = _torch_maps(nets, frames)
    assert maps.shape == (5, 2, TINY.base_size, TINY.base_size)
    assert np.abs(maps - want).max() <= 1e-4
    assert maps.std() > 1e-3  # the maps are not constant


def test_lookup_on_model_maps_matches_reference(exported):
    from coordgan.correspondence import lookup as reference
    from runtime.lookup import lookup

    nets, paths = exported
    frames = np.random.default_rng().integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    with CorrespondenceModel(paths["float"]) as model:
        maps = model.correspondence(frames)
        labels = np.random.default_rng().integers(0, 4, (1, 1, 32, 32))
        v = np.eye(4, dtype=np.float32)[labels].transpose(0, 1, 4, 2, 3)
        for method in ("dense", "sparse"):
            p, lab = lookup(maps[1:2], maps[None, 0:1], v, impl=method)
            p_ref, lab_ref = reference(torch.from_numpy(maps[1:2]), torch.from_numpy(maps[None, 0:1]), torch.from_numpy(v))
            assert np.abs(p - p_ref.numpy()).max() <= (1e-5 if method == "dense" else 1e-3)
            assert (lab == lab_ref.numpy()).mean() >= 0.999


def test_not_an_encoder_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "relu.onnx")
    with pytest.raises(CoordGANError, match="is not a CoordGAN encoder"):
        CorrespondenceModel(tmp_path / "relu.onnx")


def three_channel_encoder(path):
    """The right names, but corr_map has 3 channels (the image passed through)."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 32, 32])
    y = helper.make_tensor_value_info("corr_map", TensorProto.FLOAT, ["batch", 3, 32, 32])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["image"], ["corr_map"])], "g", [x],
                                                [y]), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_an_encoder_with_other_maps_is_refused_before_any_frame(tmp_path, monkeypatch, capsys):
    from cli_helpers import run_main
    from runtime.io.masks import DAVIS_PALETTE, write_mask

    model = three_channel_encoder(tmp_path / "three.onnx")
    with pytest.raises(CoordGANError, match=r"three.onnx is not a CoordGAN encoder: its corr_map is \[\?,3,32,32\]"):
        CorrespondenceModel(model)
    frames = tmp_path / "frames"
    frames.mkdir()
    for t in range(3):
        Image.fromarray(np.full((32, 32, 3), 40 * t, np.uint8)).save(frames / f"{t:05d}.png")
    write_mask(tmp_path / "ref.png", np.zeros((32, 32), np.uint8), DAVIS_PALETTE)
    code, _, err = run_main(monkeypatch, capsys, "propagate", frames, "--model", model, "--ref", tmp_path / "ref.png",
                            "--out", tmp_path / "out")
    assert code == 1 and "is not a CoordGAN encoder" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
