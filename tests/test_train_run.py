"""Training runs on the tiny preset (CPU): exact resume, fault handling, data, LPIPS weights, CLI."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from coordgan.checkpoint import load, save
from coordgan.cli import app
from coordgan.config import PRESETS
from coordgan.models import build
from coordgan.train.commands import Common, train_encoder, train_generator
from coordgan.train.data import ImageFolder, ResumableLoader
from coordgan.train.perceptual import backbone_file_name, build_lpips
from coordgan.train.state import load_tree
from runtime.errors import CoordGANError

TINY = PRESETS["tiny"]
ROOT = Path(__file__).resolve().parents[1]


def common(out, **kw) -> Common:
    base = dict(data="synthetic-faces", out=Path(out), steps=2, batch=2, ckpt_every=1000, sample_every=0,
                lpips_net="alex", lpips_random_backbone=True, workers=0, device="cpu", progress=False)
    base.update(kw)
    return Common(**base)


def steps_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def latest_step(out: Path) -> int:
    return json.loads((out / "latest.json").read_text())["step"]


def assert_same_networks(a: Path, b: Path) -> None:
    ca, cb = load(a), load(b)
    assert set(ca.networks) == set(cb.networks)
    for key in ca.networks:
        sa, sb = ca.networks[key].state_dict(), cb.networks[key].state_dict()
        assert sa.keys() == sb.keys()
        for name in sa:
            assert torch.equal(sa[name], sb[name]), f"{key}.{name} differs"


# -- exact resume ---------------------------------------------------------------------------------


def test_resume_is_bit_for_bit(tmp_path):
    """4 steps straight == 2 steps, stop, --resume, 2 more: every tensor, optimizer state and log value."""
    cfg = dataclasses.replace(TINY, d_reg_every=2)  # R1 steps fall in both halves (steps 1 and 3)
    straight, split = tmp_path / "straight", tmp_path / "split"
    train_generator(common(straight, steps=4), cfg=cfg)
    train_generator(common(split, steps=2), cfg=cfg)
    assert latest_step(split) == 2
    summary = train_generator(common(split, steps=4, resume=True))  # config comes from the run
    assert summary["start"] == 2 and latest_step(split) == 4
    final = "checkpoints/step_000004"
    assert_same_networks(straight / f"{final}.safetensors", split / f"{final}.safetensors")
    sa, sb = load_tree(straight / f"{final}.state.safetensors"), load_tree(split / f"{final}.state.safetensors")
    for opt in ("g", "d"):
        for pid, st in sa["optimizers"][opt]["state"].items():
            for k, t in st.items():
                assert torch.equal(t, sb["optimizers"][opt]["state"][pid][k])
    assert sa["loader"] == sb["loader"]
    trained = load(split / f"{final}.safetensors").metadata["trained"]  # the tally goes on across the resume
    assert (trained["steps"], trained["images_seen"], trained["global_batch"]) == (4, 8, 2)
    assert trained["device"].startswith("cpu") and trained["data"] == "synthetic-faces"
    assert trained["lpips"] == "alex, random backbone" and 0 < trained["minutes"] < 5
    clock = {"time", "data_time", "images_per_s"}
    strip = lambda rows: [{k: v for k, v in r.items() if k not in clock} for r in rows]  # noqa: E731
    assert strip(steps_of(straight)) == strip(steps_of(split))
    assert "r1" in steps_of(split)[2]  # step 3 regularized after the resume


def test_run_folder_guards(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(CoordGANError, match="Nothing to resume"):
        train_generator(common(out, resume=True), preset="tiny")
    train_generator(common(out, steps=1), preset="tiny")
    with pytest.raises(CoordGANError, match="already holds a run"):
        train_generator(common(out, steps=2), preset="tiny")
    with pytest.raises(CoordGANError, match="even"):
        train_generator(common(tmp_path / "odd", batch=3), preset="tiny")


def test_resume_refuses_another_data_set_preset_or_run_kind(tmp_path, monkeypatch):
    """Each went on silently (another --data) or ended in a traceback (KeyError 'g' / 'e')."""
    folder = tmp_path / "faces"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)).save(folder / f"{i}.png")
    gen, enc = tmp_path / "gen", tmp_path / "enc"
    monkeypatch.chdir(tmp_path)
    train_generator(common(gen, steps=1, data="faces"), preset="tiny")  # a folder named relative to tmp_path
    train_encoder(common(enc, steps=1, data="faces"), gen_ckpt=gen / "checkpoints" / "step_000001.safetensors")
    logs = {out: (out / "train.log").read_text() for out in (gen, enc)}
    refusals = [
        (lambda: train_generator(common(gen, steps=2, resume=True)),
         f"The run in {gen} trains on --data {folder}, not synthetic-faces: resume it with the same data, "
         "or start a new run in another --out."),
        (lambda: train_generator(common(gen, steps=2, resume=True, data="faces"), preset="celeba-128"),
         f"The run in {gen} is of preset 'tiny', not 'celeba-128': resume it without --preset, or start a new "
         "run in another --out."),
        (lambda: train_encoder(common(gen, steps=2, resume=True, data="faces")),
         f"{gen} holds generator training (`coordgan train`), not encoder training: resume it with "
         "`coordgan train --resume`, or give another --out."),
        (lambda: train_generator(common(enc, steps=2, resume=True, data="faces")),
         f"{enc} holds encoder training (`coordgan train-encoder`), not generator training: resume it with "
         "`coordgan train-encoder --resume`, or give another --out."),
    ]
    for resume, message in refusals:
        with pytest.raises(CoordGANError) as info:
            resume()
        assert str(info.value) == message
    assert logs == {out: (out / "train.log").read_text() for out in (gen, enc)}  # refused before any write
    monkeypatch.chdir(folder)  # the same folder named from elsewhere is the same data (at its last step: no step runs)
    assert train_generator(common(gen, steps=1, resume=True, data="."))["start"] == 1


def test_loss_flag_changes_weights_on_a_new_run_and_on_resume(tmp_path):
    out = tmp_path / "run"
    train_generator(common(out, steps=1, losses=("chamfer=50",)), preset="tiny")
    assert load(out / "checkpoints" / "step_000001.safetensors").config.losses.chamfer == 50.0
    assert json.loads((out / "run.json").read_text())["config"]["losses"]["chamfer"] == 50.0
    train_generator(common(out, steps=2, resume=True, losses=("r1=0.05",)))
    losses = load(out / "checkpoints" / "step_000002.safetensors").config.losses
    assert (losses.chamfer, losses.r1, losses.texture_swap) == (50.0, 0.05, TINY.losses.texture_swap)
    assert "loss weights set by --loss: r1=0.05" in (out / "train.log").read_text()
    info = json.loads((out / "run.json").read_text())  # the run as it trains now, and what each resume changed
    assert info["config"]["losses"]["r1"] == 0.05 and info["notes"][0].startswith("batch 2 instead")
    (resume,) = info["resumes"]
    assert resume["step"] == 1 and resume["changed"]["config.losses.r1"][1] == 0.05
    assert resume["changed"]["options.steps"] == [1, 2] and "config.losses.chamfer" not in resume["changed"]
    assert any(note.startswith("loss weights set by --loss: r1=0.05") for note in resume["notes"])
    # another batch than the preset's: StyleGAN2-ADA's rule (r1 ~ 1/batch, EMA images ~ batch), then --loss
    scaled = tmp_path / "scaled"
    train_generator(common(scaled, steps=1, batch=8, losses=("chamfer=50",)), preset="tiny")
    cfg = load(scaled / "checkpoints" / "step_000001.safetensors").config
    assert (cfg.batch, cfg.losses.r1, cfg.ema_half_life_kimg, cfg.lr) == (8, TINY.losses.r1 / 2, 2.0, TINY.lr)
    log = (scaled / "train.log").read_text()
    assert "batch 8 instead of the preset's 4, scaled as StyleGAN2-ADA does: r1 10 -> 5" in log
    assert log.index("scaled as StyleGAN2-ADA") < log.index("loss weights set by --loss")  # the order they apply
    train_generator(common(scaled, steps=2, batch=8, resume=True))  # not scaled twice
    assert load(scaled / "checkpoints" / "step_000002.safetensors").config.losses.r1 == TINY.losses.r1 / 2
    bad = tmp_path / "bad"
    for wrong in ("chamfr=1", "__doc__=x", "enc_con=1"):  # a typo, not a field, an encoder weight
        with pytest.raises(CoordGANError, match="Generator training takes --loss NAME=VALUE with NAME one of gan, "):
            train_generator(common(bad, losses=("chamfer=1", wrong)), preset="tiny")  # also after a good one
    with pytest.raises(CoordGANError, match="--loss warmup_iters needs an int >= 0, got '1.5'"):
        train_generator(common(bad, losses=("warmup_iters=1.5",)), preset="tiny")
    with pytest.raises(CoordGANError, match="Encoder training takes --loss NAME=VALUE with NAME one of enc_rec, "):
        train_encoder(common(bad, losses=("chamfer=1",)), gen_ckpt=out / "checkpoints" / "step_000002.safetensors")
    assert not bad.exists()  # refused before anything is written


def test_max_minutes_stops_with_a_checkpoint_and_a_sample_grid_and_resumes(tmp_path):
    """A lent machine's budget: the run stops after the step that crossed it, keeps everything, resumes."""
    out = tmp_path / "run"
    summary = train_generator(common(out, steps=50, max_minutes=1e-4), preset="tiny")  # 6 ms: one step
    assert summary["steps"] == 1 and summary["stopped"].startswith("time budget")
    assert summary["images_per_s"] > 0
    assert latest_step(out) == 1 and (out / "checkpoints" / "step_000001.safetensors").is_file()
    assert (out / "samples" / "step_000001.png").is_file()
    row = steps_of(out)[0]
    assert row["images_per_s"] > 0 and 0 <= row["data_time"] <= row["time"]
    assert "stopped at the time budget of 0.0001 min after step 1" in (out / "train.log").read_text()
    assert train_generator(common(out, steps=2, resume=True))["steps"] == 2
    with pytest.raises(CoordGANError, match="--max-minutes must be greater than 0, got 0"):
        train_generator(common(tmp_path / "bad", max_minutes=0), preset="tiny")


# -- faults ---------------------------------------------------------------------------------------


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "run"

    def poison(step, task):
        if step == 3:
            with torch.no_grad():
                task.g.conv1.conv.weight.fill_(float("nan"))

    with pytest.raises(CoordGANError) as err:
        train_generator(common(out, steps=6, ckpt_every=2), preset="tiny", hooks={"before_step": poison})
    message = str(err.value)
    assert "step 3" in message and "d_gan" in message and "step_000002" in message
    assert latest_step(out) == 2
    assert not list((out / "checkpoints").glob("step_000003*")) and not list((out / "checkpoints").glob("step_000004*"))
    ck = load(out / "checkpoints" / "step_000002.safetensors")
    assert all(torch.isfinite(p).all() for net in ck.networks.values() for p in net.parameters())
    assert [r["step"] for r in steps_of(out)] == [1, 2]
    assert "step 3" in (out / "train.log").read_text()


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_to_the_process_group_writes_a_checkpoint(tmp_path, stop_signal):
    """SIGTERM (docker stop, Slurm) or SIGHUP (the terminal closed) to the whole process group, data
    workers included: the trainer still finishes the step, checkpoints and exits 128 + the signal."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "coordgan.cli", "train", "--preset", "tiny", "--data", "synthetic-faces",
           "--out", str(out), "--steps", "100000", "--batch", "2", "--ckpt-every", "100000",
           "--lpips-net", "alex", "--lpips-random-backbone", "--workers", "1", "--device", "cpu"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not ((out / "log.jsonl").is_file() and (out / "log.jsonl").read_text().strip()):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "no training step within 120 s"
            time.sleep(0.2)
        os.killpg(proc.pid, stop_signal)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + stop_signal, stderr
    assert f"Stopped by {stop_signal.name}" in stderr and "--resume" in stderr
    step = latest_step(out)
    assert step >= 1 and (out / "checkpoints" / f"step_{step:06d}.state.safetensors").is_file()
    assert set(load(out / "checkpoints" / f"step_{step:06d}.safetensors").networks) == {"g", "g_ema", "d", "d_patch"}


# -- data -----------------------------------------------------------------------------------------


def _image_folder(root: Path) -> Path:
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(root / f"img{i}.png")
    (root / "sub").mkdir()
    Image.fromarray(rng.integers(0, 255, (50, 30), dtype=np.uint8), "L").save(root / "sub" / "gray.jpg")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "notes.txt").write_text("not an image")
    return root


def test_image_folder_skips_and_counts_unreadable_files(tmp_path):
    folder = _image_folder(tmp_path / "images")
    ds = ImageFolder(folder, 32)
    assert len(ds) == 6  # 5 images + the broken one; the .txt is not an image file
    loader = ResumableLoader(ds, batch=2, seed=0)
    seen_bad = set()
    for _ in range(6):  # two epochs
        images, bad = loader.next()
        assert images.shape == (2, 3, 32, 32) and images.min() >= -1 and images.max() <= 1
        seen_bad.update(bad)
    assert seen_bad == {str(folder / "broken.jpg")}

    summary = train_generator(common(tmp_path / "run", data=str(folder), steps=3), preset="tiny")
    assert summary["skipped"] == 1
    assert "broken.jpg" in (tmp_path / "run" / "train.log").read_text()
    assert steps_of(tmp_path / "run")[-1]["skipped"] == 1

    (tmp_path / "broken").mkdir()
    for name in ("a.png", "b.jpg"):
        (tmp_path / "broken" / name).write_bytes(b"garbage")
    with pytest.raises(CoordGANError, match="None of the 2 image files"):
        ResumableLoader(ImageFolder(tmp_path / "broken", 32), batch=2, seed=0).next()

    (tmp_path / "empty").mkdir()
    with pytest.raises(CoordGANError, match="no image files"):
        ImageFolder(tmp_path / "empty", 32)


def test_loader_resumes_mid_epoch():
    from coordgan.train.data import SyntheticFacesData

    ds = SyntheticFacesData(16, length=10)
    a = ResumableLoader(ds, batch=2, seed=5)
    batches = [a.next()[0] for _ in range(7)]  # crosses an epoch boundary (5 batches per epoch)
    b = ResumableLoader(ds, batch=2, seed=5)
    for _ in range(3):
        b.next()
    c = ResumableLoader(ds, batch=2, seed=5)
    c.load_state(b.state())
    for expected in batches[3:]:
        assert torch.equal(c.next()[0], expected)


def test_held_data_gives_the_streamed_batches_bit_for_bit(tmp_path):
    """--hold-data (the default on CUDA) decodes once and indexes; order, flips, skipped files and
    resume positions are the streaming loader's."""
    from coordgan.train.data import HeldData, SyntheticFacesData, hold

    folder = _image_folder(tmp_path / "images")
    for ds in (SyntheticFacesData(16, length=10), ImageFolder(folder, 16)):
        held = HeldData(ds, "cpu", workers=0)
        assert held.images.shape == (len(ds), 16, 16, 3) and held.images.dtype == torch.uint8 and held.rate > 0
        streamed, fast = ResumableLoader(ds, batch=2, seed=3), ResumableLoader(ds, batch=2, seed=3, held=held)
        for _ in range(7):  # across an epoch boundary
            (a, bad_a), (b, bad_b) = streamed.next(), fast.next()
            assert torch.equal(a, b) and a.is_contiguous() and b.is_contiguous() and bad_a == bad_b
        resumed = ResumableLoader(ds, batch=2, seed=3, held=held)
        resumed.load_state(streamed.state())
        assert torch.equal(resumed.next()[0], streamed.next()[0])
    assert hold(ds, 16, "cpu", 0, None) is None  # streamed by default off CUDA
    with pytest.raises(CoordGANError, match="None of the 2 image files"):
        (tmp_path / "broken").mkdir()
        for name in ("a.png", "b.jpg"):
            (tmp_path / "broken" / name).write_bytes(b"garbage")
        HeldData(ImageFolder(tmp_path / "broken", 32), "cpu", workers=0)

    straight, held_run = tmp_path / "straight", tmp_path / "held"
    train_generator(common(straight, data=str(folder), steps=2), preset="tiny")
    train_generator(common(held_run, data=str(folder), steps=2, hold_data=True), preset="tiny")
    assert_same_networks(straight / "checkpoints" / "step_000002.safetensors",
                         held_run / "checkpoints" / "step_000002.safetensors")
    log = (held_run / "train.log").read_text()
    assert re.search(r"data: 6 images held on cpu \(0 MiB\), decoded in [0-9.]+ s \([0-9]+ images/s", log)
    assert "skipped unreadable image file" in log and "broken.jpg" in log


def test_plain_cuda_device_is_given_an_index(monkeypatch):
    """`--device cuda` on one GPU: torch.cuda.set_device rejects a device without an index (the first
    lent GPU run stopped there), so the run names the current one. Checked with torch's own validator."""
    from torch.cuda._utils import _get_device_index

    from coordgan.train import commands, distributed

    chosen = []
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)  # restored after (the run turns it on)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: chosen.append(_get_device_index(device)))
    assert commands._rank_device("cuda", distributed.Dist()) == "cuda:0"
    assert commands._rank_device("cuda:0", distributed.Dist()) == "cuda:0"
    assert chosen == [0, 0]


# -- LPIPS weights --------------------------------------------------------------------------------


def test_missing_lpips_weights_stop_before_step_0(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    name, _ = backbone_file_name("vgg")
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--preset", "tiny", "--data", "synthetic-faces", "--out", str(out),
                                         "--steps", "2", "--batch", "2", "--workers", "0", "--device", "cpu"])
    assert isinstance(result.exception, CoordGANError)
    message = str(result.exception)
    assert name == "vgg16-397923af.pth" and name in message
    assert str(tmp_path / "torch-home" / "hub" / "checkpoints") in message and "--lpips-weights" in message
    assert not out.exists()
    (tmp_path / "junk.pt").write_bytes(b"not a state dict" * 10)
    with pytest.raises(CoordGANError, match="junk.pt is not a PyTorch weights file"):
        build_lpips("vgg", weights=tmp_path / "junk.pt")


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_pickle_as_lpips_weights_is_one_clean_sentence(tmp_path, recwarn):
    """torch's warning about the pickle protocol (with its source line) was printed before the error."""
    torch.save({"features.0.weight": torch.zeros(1), "evil": _Payload()}, tmp_path / "vgg.pth")
    result = CliRunner().invoke(app, ["train", "--preset", "tiny", "--data", "synthetic-faces", "--out",
                                      str(tmp_path / "run"), "--steps", "1", "--batch", "2", "--workers", "0",
                                      "--device", "cpu", "--lpips-weights", str(tmp_path / "vgg.pth")])
    assert isinstance(result.exception, CoordGANError)
    assert str(result.exception) == (f"Refusing to load {tmp_path / 'vgg.pth'}: it holds pickled Python objects "
                                     "(such as builtins.print), not only tensors, and unpickling them could run "
                                     "arbitrary code, so they are never loaded.")
    assert [str(w.message) for w in recwarn] == [] and "this must never run" not in result.output


def test_lpips_backbone_from_the_hub_cache(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    cache = tmp_path / "th" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.manual_seed(0)
    reference = torchvision.models.alexnet(weights=None).state_dict()
    torch.save(reference, cache / backbone_file_name("alex")[0])
    model, source = build_lpips("alex")
    assert source.backbone == str(cache / "alexnet-owt-7be5be79.pth")
    torch.testing.assert_close(model.net.slice1[0].weight, reference["features.0.weight"], rtol=0, atol=0)
    torch.testing.assert_close(getattr(model.net.slice5, "10").bias, reference["features.10.bias"], rtol=0, atol=0)
    # the calibrated linear layers come from the lpips wheel itself
    import lpips

    shipped = torch.load(Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth", map_location="cpu",
                         weights_only=True)
    torch.testing.assert_close(model.lin0.model[1].weight, shipped["lin0.model.1.weight"], rtol=0, atol=0)
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(3)}, bad)
    with pytest.raises(CoordGANError, match="not torchvision's alex"):
        build_lpips("alex", weights=bad)


# -- CLI, samples, encoder, 512 stage, amp --------------------------------------------------------


def test_cli_train_writes_checkpoints_logs_and_samples(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--preset", "tiny", "--data", "synthetic-faces", "--out", str(out), "--steps", "2",
            "--batch", "2", "--sample-every", "1", "--ckpt-every", "1", "--lpips-net", "alex",
            "--lpips-random-backbone", "--workers", "0", "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert re.search(r"done: step 2; checkpoint .*median step [0-9.]+ s \([0-9.]+ images/s\)", result.output)
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step_000001.png", "step_000002.png"]
    assert Image.open(out / "samples" / "step_000002.png").size[0] > 64
    ck = load(out / "checkpoints" / "step_000002.safetensors")
    assert set(ck.networks) == {"g", "g_ema", "d", "d_patch"} and ck.metadata["step"] == 2
    rows = steps_of(out)
    assert [r["step"] for r in rows] == [1, 2]
    assert {"d_gan", "d_patch", "r1", "r1_patch", "g_gan", "g_texture", "g_structure", "g_warp", "g_chamfer",
            "lr_g", "lr_d", "time"} <= set(rows[0])
    assert rows[0]["lr_g"] == pytest.approx(0.002 * 4 / 5) and rows[0]["lr_d"] == pytest.approx(0.002 * 16 / 17)
    log = (out / "train.log").read_text()
    assert "RANDOM backbone" in log
    # beside each grid, how far the structure code moves the correspondence map (the collapse to watch for)
    moved = re.findall(r"step (\d+): structure branch: correspondence maps vary by ([0-9.]+) \(([0-9.]+) px\) "
                       r"over 64 structure codes; image edges vary ([0-9.]+)x as much across structure codes", log)
    assert [m[0] for m in moved] == ["1", "2"]
    std, px, ratio = float(moved[-1][1]), float(moved[-1][2]), float(moved[-1][3])
    assert 0 < std < 1 and px == pytest.approx(std * (TINY.base_size - 1) / 2, abs=0.01)
    assert 0 < ratio < 100
    assert len(list((out / "checkpoints").glob("*.safetensors"))) == 4  # the last 2 pairs are kept


def test_cli_help_does_not_import_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "from typer.testing import CliRunner\nfrom coordgan.cli import app\n"
            "for cmd in (['--help'], ['train', '--help'], ['train-encoder', '--help']):\n"
            "    r = CliRunner().invoke(app, cmd); assert r.exit_code == 0, r.output\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_train_encoder_freezes_the_generator_and_resumes_exactly(tmp_path):
    torch.manual_seed(0)
    g = build(TINY, which=("g",))["g"]
    made = {"kind": "generator", "steps": 7, "images_seen": 28, "minutes": 0.5, "device": "cpu (2 cores)",
            "processes": 1, "global_batch": 4, "data": "synthetic-faces", "lpips": "vgg, random backbone"}
    gen_ckpt = save(tmp_path / "gen.safetensors", TINY, {"g": g, "g_ema": copy.deepcopy(g)},
                    metadata={"trained": made})
    straight, split = tmp_path / "enc", tmp_path / "enc-split"
    train_encoder(common(straight, steps=2, sample_every=2), gen_ckpt=gen_ckpt)
    ck = load(straight / "checkpoints" / "step_000002.safetensors")
    assert set(ck.networks) == {"g_ema", "e"} and ck.metadata["kind"] == "encoder"
    source = load(gen_ckpt).networks["g_ema"].state_dict()
    assert all(torch.equal(t, source[k]) for k, t in ck.networks["g_ema"].state_dict().items())
    assert {"e_rec_l1", "e_rec_lpips", "e_con_ws", "e_con_corr", "e_texture"} <= set(steps_of(straight)[0])
    assert (straight / "samples" / "step_000002.png").is_file()
    train_encoder(common(split, steps=1), gen_ckpt=gen_ckpt)
    train_encoder(common(split, steps=2, resume=True))
    assert_same_networks(straight / "checkpoints" / "step_000002.safetensors",
                         split / "checkpoints" / "step_000002.safetensors")
    # where it came from, the frozen generator's training included, kept across the resume
    meta = load(split / "checkpoints" / "step_000002.safetensors").metadata
    assert meta["generator"] == made
    assert {k: meta["trained"][k] for k in ("kind", "steps", "images_seen", "global_batch")} == {
        "kind": "encoder", "steps": 2, "images_seen": 4, "global_batch": 2}
    result = CliRunner().invoke(app, ["info", str(split / "checkpoints" / "step_000002.safetensors")],
                                env={"COLUMNS": "240"})  # one table row per line
    assert result.exit_code == 0, result.output
    assert "trained (generator)" in result.output and "7 steps, 28 images (batch 4, 1 process(es)) in 0.5 min" in (
        result.output)
    assert "trained (encoder)" in result.output and "2 steps, 4 images (batch 2" in result.output


def test_init_from_a_base_resolution_run_freezes_the_structure_branch(tmp_path):
    """The 512 stage at tiny scale: a 32 px run starts a 64 px model with one upsampling pair."""
    torch.manual_seed(0)
    nets = build(TINY, which=("g", "d", "d_patch"))
    base_ckpt = save(tmp_path / "base.safetensors", TINY, {**nets, "g_ema": copy.deepcopy(nets["g"])})
    up = dataclasses.replace(TINY, name="tiny-up", size=64, up_channels=(32,), d_from_rgb_sizes=(32, 64))
    captured = {}

    def snapshot(step, task):
        captured[step] = {k: {n: t.clone() for n, t in net.state_dict().items()}
                          for k, net in task.checkpoint_networks().items()}

    out = tmp_path / "up"
    train_generator(common(out, steps=1), cfg=up, init_from=base_ckpt, hooks={"before_step": snapshot})
    start, src = captured[1], {k: v.state_dict() for k, v in nets.items()}
    assert all(torch.equal(start["g"][k], t) for k, t in src["g"].items())
    assert torch.equal(start["d"]["convs.1.conv1.0.weight"], src["d"]["convs.0.conv1.0.weight"])  # shifted a level
    assert torch.equal(start["d"]["from_rgb.0.0.weight"], src["d"]["from_rgb.0.0.weight"])
    ck = load(out / "checkpoints" / "step_000001.safetensors")
    assert ck.config.size == 64 and ck.metadata["freeze_structure"] is True
    after = ck.networks["g"].state_dict()
    frozen = [k for k in after if k.startswith(("struc.", "foldnet."))]
    assert frozen and all(torch.equal(after[k], src["g"][k]) for k in frozen)
    assert not torch.equal(after["convs.4.conv.weight"], start["g"]["convs.4.conv.weight"])  # new pair trains
    assert not torch.equal(after["convs.0.conv.weight"], src["g"]["convs.0.conv.weight"])


def test_amp_on_cpu_trains_in_bfloat16(tmp_path):
    summary = train_generator(common(tmp_path / "amp", steps=1, amp=True), preset="tiny")
    assert summary["checkpoint"] is not None
    row = steps_of(tmp_path / "amp")[0]
    assert all(np.isfinite(v) for k, v in row.items() if isinstance(v, float))
    assert "bfloat16" in (tmp_path / "amp" / "train.log").read_text()
