"""Checkpoints: our safetensors round trip, the public .pt layout, and every bad file."""

import pickle
import struct

import pytest
import torch

import coordgan
from coordgan.checkpoint import load, save
from coordgan.config import PRESETS, get_preset
from coordgan.models import Discriminator, Encoder, Generator, build
from runtime.errors import CoordGANError

TINY = PRESETS["tiny"]

# Names and shapes straight from NVlabs/CoordGAN's model/ files (celeba-128 configuration).
PUBLIC_NAMES = {
    "g": {
        "style.1.weight": (512, 512),
        "struc.8.bias": (512,),
        "foldnet.conv1_1.weight": (512, 514, 1),
        "foldnet.conv1_3.bias": (2,),
        "lff.ffm.conv.weight": (512, 2, 1, 1),
        "conv1.conv.weight": (1, 512, 512, 3, 3),
        "conv1.noise.weight": (1,),
        "conv1.activate.bias": (512,),
        "to_rgb1.conv.weight": (1, 3, 514, 1, 1),
        "convs.0.conv.weight": (1, 512, 514, 3, 3),
        "convs.0.conv.modulation.weight": (514, 512),
        "convs.9.conv.modulation.bias": (514,),
        "to_rgbs.4.bias": (1, 3, 1, 1),
    },
    "e": {
        "FromRGB.Conv.weight": (32, 3, 1, 1),
        "FromRGB.Act.bias": (32,),
        "DownToSpatialCode.ResBlockDownBy1.conv1.Conv.weight": (32, 32, 3, 3),
        "DownToSpatialCode.ResBlockDownBy8.conv2.Blur.kernel": (3, 3),
        "DownToSpatialCode.ResBlockDownBy8.skip.Conv.weight": (512, 256, 1, 1),
        "ToSpatialCode.1.Conv.bias": (64,),
        "sp_fc.weight": (512, 4096),
        "DownToGlobalCode.ConvLayerDownBy32.Conv.weight": (2048, 1024, 3, 3),
        "ToGlobalCode.11.bias": (512,),
    },
    "d": {
        "from_rgb.0.0.weight": (256, 3, 1, 1),
        "from_rgb.2.1.bias": (64,),
        "convs.0.conv2.1.weight": (512, 256, 3, 3),
        "convs.4.skip.1.weight": (512, 512, 1, 1),
        "final_conv.0.weight": (512, 513, 3, 3),
        "final_linear.1.weight": (1, 512),
    },
}


@pytest.mark.parametrize("key, net", [("g", Generator), ("e", Encoder), ("d", Discriminator)])
def test_state_dict_names_and_shapes_are_the_public_ones(key, net):
    state = net(get_preset("celeba-128")).state_dict()
    for name, shape in PUBLIC_NAMES[key].items():
        assert name in state, name
        assert tuple(state[name].shape) == shape, name


def _outputs(ck, seed=0):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(2, ck.config.style_dim, generator=gen)
    image = torch.rand(2, 3, ck.config.size, ck.config.size, generator=gen) * 2 - 1
    with torch.no_grad():
        img, corr = ck.generator(z, z, noise_mode="const")
        w_s, w_t = ck.encoder(image)
    return img, corr, w_s, w_t


def test_safetensors_round_trip(tmp_path):
    torch.manual_seed(0)
    nets = build(TINY)
    nets["g_ema"] = Generator(TINY)
    path = save(tmp_path / "tiny.safetensors", TINY, nets, metadata={"step": 7})
    ck = coordgan.load(path)
    assert ck.source == "coordgan" and ck.config == TINY and ck.metadata == {"step": 7}
    assert set(ck.networks) == {"g", "e", "d", "d_patch", "g_ema"}
    for key, net in nets.items():
        for name, tensor in net.state_dict().items():
            assert torch.equal(ck.networks[key].state_dict()[name], tensor), (key, name)
    assert len(ck.sha256) == 64
    assert not list(tmp_path.glob(".*tmp"))  # no temp file left behind


def _public_file(path, nets, extra=None):
    payload = {"g": nets["g"].state_dict(), "g_ema": nets["g"].state_dict(), "e": nets["e"].state_dict(),
               "d": nets["d"].state_dict(), "g_optim": {"state": {}, "param_groups": [{"lr": 0.002}]}}
    payload.update(extra or {})
    torch.save(payload, path)
    return path


def test_public_layout_round_trips(tmp_path):
    torch.manual_seed(1)
    nets = build(TINY, which=("g", "e", "d"))
    path = _public_file(tmp_path / "public.pt", nets)
    ck = load(path)
    assert ck.source == "public" and ck.config.name == "tiny"
    assert set(ck.networks) == {"g", "g_ema", "e", "d"}
    img, corr, _, _ = _outputs(ck)
    z = torch.randn(2, TINY.style_dim, generator=torch.Generator().manual_seed(0))  # as _outputs draws it
    with torch.no_grad():
        ref_img, ref_corr = nets["g"].eval()(z, z, noise_mode="const")
    assert torch.equal(img, ref_img) and torch.equal(corr, ref_corr)


def test_public_checkpoint_with_ddp_prefixes_loads(tmp_path):
    nets = build(TINY, which=("g",))
    state = {f"module.{k}": v for k, v in nets["g"].state_dict().items()}
    torch.save({"g_ema": state}, tmp_path / "ddp.pt")
    assert set(load(tmp_path / "ddp.pt").networks) == {"g_ema"}


def test_wrong_preset_for_public_checkpoint(tmp_path):
    path = _public_file(tmp_path / "public.pt", build(TINY, which=("g", "e", "d")))
    with pytest.raises(CoordGANError, match="does not match preset 'celeba-128'"):
        load(path, preset="celeba-128")


def test_missing_unknown_and_misshaped_keys_are_named(tmp_path):
    nets = build(TINY, which=("g", "e", "d"))
    state = nets["g"].state_dict()
    del state["style.1.weight"]
    state["style.99.weight"] = torch.zeros(1)
    state["struc.2.bias"] = torch.zeros(3)
    torch.save({"g_ema": state}, tmp_path / "bad.pt")
    with pytest.raises(CoordGANError) as err:
        load(tmp_path / "bad.pt", preset="tiny")
    msg = str(err.value)
    assert "missing keys style.1.weight" in msg
    assert "unknown keys style.99.weight" in msg
    assert "mis-shaped keys struc.2.bias (3,)" in msg


def test_mismatched_network_inside_our_checkpoint(tmp_path):
    path = save(tmp_path / "x.safetensors", TINY, {"e": Encoder(TINY)})
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    tensors["e.sp_fc.weight"] = torch.zeros(2, 2)
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        meta = f.metadata()
    save_file(tensors, tmp_path / "y.safetensors", metadata=meta)
    with pytest.raises(CoordGANError, match=r"\[e\] does not fit the model: mis-shaped keys e?.*sp_fc.weight"):
        load(tmp_path / "y.safetensors")


def test_truncated_files(tmp_path):
    path = save(tmp_path / "t.safetensors", TINY, {"g": Generator(TINY)})
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CoordGANError, match="truncated or corrupt"):
        load(tmp_path / "cut.safetensors")
    pt = _public_file(tmp_path / "p.pt", build(TINY, which=("g", "e", "d")))
    blob = pt.read_bytes()
    (tmp_path / "cut.pt").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CoordGANError, match="truncated or corrupt"):
        load(tmp_path / "cut.pt")


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


_PICKLES = {  # how a file of Python objects gets made, and the first object it names
    "zip": (lambda p: torch.save({"g_ema": Generator(TINY).state_dict(), "evil": Payload()}, p), "builtins.print"),
    "legacy torch.save": (lambda p: torch.save({"g_ema": Payload()}, p, _use_new_zipfile_serialization=False),
                          "builtins.print"),
    "plain pickle": (lambda p: p.write_bytes(pickle.dumps({"g_ema": Payload()})), "builtins.print"),
    "whole module": (lambda p: torch.save({"g_ema": Generator(TINY)}, p), "coordgan.models.generator.Generator"),
}


@pytest.mark.parametrize("kind", list(_PICKLES))
def test_a_pickle_of_objects_is_refused_as_such(tmp_path, capsys, kind):
    """Told by the file's bytes (the opcodes of its pickle), whatever torch's message says; torch's advice
    to load with weights_only=False is never passed on (a plain pickle was once called truncated)."""
    make, first = _PICKLES[kind]
    make(tmp_path / "evil.pt")
    with pytest.raises(CoordGANError) as info:
        load(tmp_path / "evil.pt")
    assert str(info.value) == (f"Refusing to load {tmp_path / 'evil.pt'}: it holds pickled Python objects (such as "
                               f"{first}), not only tensors, and unpickling them could run arbitrary code, so they "
                               "are never loaded.")
    assert "this must never run" not in capsys.readouterr().out


def test_a_damaged_pickle_is_corrupt_without_torch_advice(tmp_path):
    import zipfile

    pt = _public_file(tmp_path / "p.pt", build(TINY, which=("g", "e", "d")))
    with zipfile.ZipFile(pt) as z:  # torch stores data.pkl uncompressed: its bytes lie in the file as they are
        info = next(i for i in z.infolist() if i.filename.endswith("/data.pkl"))
    blob = bytearray(pt.read_bytes())
    name_len, extra_len = struct.unpack_from("<HH", blob, info.header_offset + 26)  # the local header's own
    start = info.header_offset + 30 + name_len + extra_len
    assert blob[start:start + 2] == b"\x80\x02"  # PROTO 2, then the first opcode
    blob[start + 2] = 0xFF  # no such opcode
    (tmp_path / "bad.pt").write_bytes(bytes(blob))
    with pytest.raises(CoordGANError, match=r"bad.pt is truncated or corrupt \(its pickle data is damaged") as exc:
        load(tmp_path / "bad.pt")
    assert "weights_only" not in str(exc.value)
    # tensors in the legacy (non-zip) layout still load
    torch.save({"g_ema": Generator(TINY).state_dict()}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert set(load(tmp_path / "legacy.pt").networks) == {"g_ema"}


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("hello world")
    with pytest.raises(CoordGANError, match="neither a safetensors nor a PyTorch checkpoint"):
        load(tmp_path / "notes.txt")
    with pytest.raises(CoordGANError, match="does not exist"):
        load(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CoordGANError, match="expected top-level keys"):
        load(tmp_path / "other.pt")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, tmp_path / "plain.safetensors")
    with pytest.raises(CoordGANError, match="not a CoordGAN checkpoint"):
        load(tmp_path / "plain.safetensors")
    # any bytes under a .safetensors name: one sentence, whatever reader the bytes suggest
    for junk in (b"\x80\x04\x95", b"\x80\x04\x95\x10" + bytes(7) + b"junkjunk", b"PK\x03\x04junk"):
        (tmp_path / "junk.safetensors").write_bytes(junk)
        with pytest.raises(CoordGANError, match="junk.safetensors is truncated or corrupt") as info:
            load(tmp_path / "junk.safetensors")
        assert "\n" not in str(info.value)


def test_require_names_the_missing_network(tmp_path):
    ck = load(save(tmp_path / "g.safetensors", TINY, {"g": Generator(TINY)}))
    with pytest.raises(CoordGANError, match="has no encoder"):
        ck.encoder


def test_atomic_write_gives_usual_permissions_and_refuses_a_folder(tmp_path):
    import os

    from runtime.fileio import atomic_write

    with atomic_write(tmp_path / "f.bin") as f:
        f.write(b"x")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "f.bin").stat().st_mode & 0o777 == 0o666 & ~mask
    with pytest.raises(CoordGANError, match="is a folder; give a file name"):
        with atomic_write(tmp_path) as f:
            f.write(b"x")
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]  # no temp file left


def test_random_weights_of_a_preset_have_one_recipe(tmp_path, monkeypatch):
    """bench / export onnx --preset (ModelSource, saved in the cache) and eval-propagation --preset each
    seeded and built the networks themselves, and each had the refusal sentence: one helper now."""
    from coordgan import checkpoint
    from coordgan.evaluation.run import EvalOptions, _model
    from export.cache import ModelSource

    calls = []
    real = checkpoint.random_networks

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "random_networks", spy)
    cached = ModelSource(preset="tiny", seed=3, cache=tmp_path).checkpoint()
    config, _, record = _model(None, EvalOptions(data="synthetic-faces", preset="tiny", seed=3), "cpu")
    assert calls == [("tiny", 3), ("tiny", 3)] and config.name == "tiny" and record["weights"] == "random (seed 3)"
    _, nets = real("tiny", 3)
    for key in ("g", "e"):
        for name, tensor in nets[key].state_dict().items():
            assert torch.equal(cached.networks[key].state_dict()[name], tensor), (key, name)
    for ckpt, preset in ((None, None), (tmp_path / "x.safetensors", "tiny")):
        for make in (lambda: ModelSource(ckpt, preset), lambda: _model(ckpt, EvalOptions("synthetic-faces",
                                                                                           preset=preset), "cpu")):
            with pytest.raises(CoordGANError) as refused:
                make()
            assert str(refused.value) == checkpoint.ONE_SOURCE == ("Give exactly one of a checkpoint and --preset "
                                                                   "NAME (random weights).")
