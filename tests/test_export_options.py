"""`coordgan export onnx` as a newcomer meets it: --preset instead of a checkpoint, a line per stage
when the output is no terminal, --opset within what the installed tools support, the manifest's facts
as written, and refusals in one sentence before any work. Real exports of the tiny preset."""

import json

import onnx
import onnxruntime
import pytest
import torch

from cli_helpers import run_main
from coordgan.checkpoint import save
from coordgan.config import PRESETS
from coordgan.models import build
from export import graph_tools
from export.onnx_export import ExportOptions, export_onnx, opset_range
from export.verify import verify_directory


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    return save(tmp_path_factory.mktemp("ck") / "tiny.safetensors", PRESETS["tiny"],
                build(PRESETS["tiny"], which=("g", "e")))


def test_preset_exports_random_weights_with_a_line_per_stage(tmp_path, monkeypatch, capsys):
    """No checkpoint needed to try the export; the random weights are saved once in the cache, where the
    manifest points `export verify`. Captured output is no terminal: each stage is a line."""
    monkeypatch.setenv("COORDGAN_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "exp"
    code, stdout, err = run_main(monkeypatch, capsys, "export", "onnx", "--preset", "tiny", "--out", out,
                                 "--only", "encoder", "--verify-batches", 1)
    assert code == 0, err
    stages = [line for line in stdout.splitlines() if line.endswith(" ...")]
    assert stages == ["loading preset tiny, random weights (seed 0) ...", "making tiny with random weights (seed 0) ...",
                      "exporting encoder ...", "verifying against PyTorch ..."], stdout
    assert f"wrote {out}: encoder.onnx, manifest.json" in " ".join(stdout.split())  # Rich wraps at 80 columns
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["preset"] == "tiny"
    assert manifest["checkpoint"]["path"] == str(tmp_path / "cache" / "presets" / "tiny-seed0.safetensors")
    # the versions of what made it, onnxruntime under whichever distribution (onnxruntime-gpu here) installed it
    assert manifest["tool_versions"]["onnxruntime"] == onnxruntime.__version__
    assert all(manifest["tool_versions"].values()), manifest["tool_versions"]
    code, stdout, err = run_main(monkeypatch, capsys, "export", "verify", out, "--batches", 1)
    assert code == 0 and f"verified {out}" in " ".join(stdout.split()), err


def test_checkpoint_or_preset_and_a_missing_directory_are_one_sentence(tmp_path, monkeypatch, capsys, tiny_ckpt):
    monkeypatch.setenv("COORDGAN_CACHE", str(tmp_path / "cache"))
    exactly_one = "Give exactly one of a checkpoint and --preset NAME (random weights)."
    for args, message in [(("export", "onnx", "--out", tmp_path / "a"), exactly_one),
                          (("export", "onnx", tiny_ckpt, "--preset", "tiny", "--out", tmp_path / "a"), exactly_one),
                          (("export", "onnx", "--preset", "huge", "--out", tmp_path / "a"), "Unknown preset 'huge'"),
                          (("export", "verify", tmp_path / "nodir"), f"Export directory {tmp_path / 'nodir'} does "
                                                                      "not exist."),
                          (("export", "verify", tiny_ckpt), f"{tiny_ckpt} is a file, not an export directory")]:
        code, stdout, err = run_main(monkeypatch, capsys, *args)
        assert code == 1 and err.startswith(f"Error: {message}") and err.count("\n") == 1, (args, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # refused before any work: no cache, no folder


def test_opset_outside_what_the_tools_support_is_refused_first(tmp_path, monkeypatch, capsys, tiny_ckpt):
    """--opset 999 exported an opset-18 model after two exporter tracebacks, exit 0, "verified", and a
    manifest saying 999."""
    oldest, newest, limit = opset_range()
    assert oldest == 18 and newest >= 18 and limit
    for opset in (17, newest + 1, 999):
        code, stdout, err = run_main(monkeypatch, capsys, "export", "onnx", tiny_ckpt, "--out", tmp_path / "x",
                                     "--opset", opset)
        assert code == 1 and stdout == "", (opset, stdout)
        assert err == (f"Error: --opset must be 18 to {newest}, not {opset}: the exporter writes opset 18 and newer, "
                       f"and {limit} goes up to opset {newest}.\n")
    assert not (tmp_path / "x").exists()


def test_manifest_states_the_opset_written_and_verify_checks_it(tmp_path, tiny_ckpt):
    """The newest opset in range exports, runs in ONNX Runtime and verifies; a manifest that names
    another opset than its model's fails verification."""
    newest = opset_range()[1]
    out = export_onnx(tiny_ckpt, tmp_path / "exp", ExportOptions(only="encoder", opset=newest,
                                                                 verify_batches=(1,))).directory
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["opset"] == graph_tools.opset(onnx.load(out / "encoder.onnx")) == newest
    manifest["opset"] = 999
    (out / "manifest.json").write_text(json.dumps(manifest))
    failures = verify_directory(out, batches=(1,)).failures
    assert f"encoder: it is opset {newest}, not the manifest's 999." in failures, failures


def test_as_preset_names_the_preset_of_a_public_checkpoint(tmp_path, monkeypatch, capsys):
    """celeba-128, cars-128 and cats-128 have the same shapes, and an authors' .pt names none: the first that
    fits was taken, with no way to say which (--preset became random weights). --as-preset NAME says it,
    checked against the shapes. Here a twin of tiny plays the presets that share shapes."""
    import dataclasses

    monkeypatch.setenv("COORDGAN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(PRESETS, "tiny-twin", dataclasses.replace(PRESETS["tiny"], name="tiny-twin"))
    torch.manual_seed(0)
    nets = build(PRESETS["tiny"], which=("g", "e"))
    public = tmp_path / "public.pt"
    torch.save({"g_ema": nets["g"].state_dict(), "e": nets["e"].state_dict()}, public)
    for as_preset, expected in ((None, "tiny"), ("tiny-twin", "tiny-twin")):
        out = tmp_path / f"exp-{expected}"
        code, stdout, err = run_main(monkeypatch, capsys, "export", "onnx", public, "--out", out, "--only",
                                     "encoder", "--no-verify", *(("--as-preset", as_preset) if as_preset else ()))
        assert code == 0, err
        assert json.loads((out / "manifest.json").read_text())["preset"] == expected
    assert f"loading checkpoint {public} as preset tiny-twin ..." in " ".join(stdout.split())
    for args, message in [(("--as-preset", "celeba-128"), f"Checkpoint {public} [g_ema] does not match preset "
                                                          "'celeba-128': "),
                          (("--as-preset", "huge"), "Unknown preset 'huge'"),
                          (("--preset", "tiny", "--as-preset", "tiny"), "Give exactly one of a checkpoint")]:
        code, stdout, err = run_main(monkeypatch, capsys, "export", "onnx", public, "--out", tmp_path / "x", *args)
        assert code == 1 and err.startswith(f"Error: {message}") and err.count("\n") == 1, (args, err)
    code, stdout, err = run_main(monkeypatch, capsys, "export", "onnx", "--preset", "tiny", "--as-preset", "tiny",
                                 "--out", tmp_path / "x")
    assert code == 1 and err == ("Error: --as-preset names the preset of a checkpoint; --preset tiny has random "
                                 "weights of its own preset, so give one of them.\n"), err
    assert not (tmp_path / "x").exists()
