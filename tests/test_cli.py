"""The `coordgan` CLI: starts without torch, reports user errors in one line, writes real PNGs."""

import json
import sys

import numpy as np
import pytest
from PIL import Image

from cli_helpers import run_cli, run_main
from coordgan.checkpoint import save
from coordgan.config import PRESETS
from coordgan.models import build
from runtime.errors import CoordGANError

TINY = PRESETS["tiny"]


def test_help_runs_with_torch_unimportable():
    result = run_cli("--help", block_torch=True)
    assert result.returncode == 0, result.stderr
    assert "sample" in result.stdout and "info" in result.stdout


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return save(tmp_path_factory.mktemp("ck") / "tiny.safetensors", TINY, build(TINY, which=("g", "e")))


def test_info_json(tiny_ckpt):
    result = run_cli("info", str(tiny_ckpt), "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["preset"] == "tiny" and len(record["sha256"]) == 64
    assert record["parameters"]["g"] > 0 and record["config"]["size"] == 32


def test_sample_writes_a_grid_png(tiny_ckpt, tmp_path):
    out = tmp_path / "grid.png"
    result = run_cli("sample", str(tiny_ckpt), "--out", str(out), "--n", "3")
    assert result.returncode == 0, result.stderr
    grid = np.asarray(Image.open(out))
    assert grid.ndim == 3 and grid.shape[2] == 3
    assert grid.shape[0] > grid.shape[1]  # one row of maps + 3 rows of images, 3 columns
    assert grid.std() > 0


def test_sample_random_weights_from_preset(tmp_path):
    out = tmp_path / "random.png"
    assert run_cli("sample", "--preset", "tiny", "--out", str(out)).returncode == 0
    assert out.stat().st_size > 0


@pytest.mark.parametrize(
    "args, message",
    [
        (("info", "/nonexistent/ckpt.pt"), "does not exist"),
        (("sample",), "--preset NAME"),
        (("sample", "--preset", "huge"), "Unknown preset 'huge'"),
    ],
)
def test_user_errors_are_one_sentence_without_traceback(args, message):
    result = run_cli(*args)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_junk_under_a_checkpoint_name_is_one_sentence_everywhere(tmp_path, monkeypatch, capsys):
    """Bytes that are no checkpoint, named .safetensors: every command that loads one says so in one sentence."""
    monkeypatch.setenv("COORDGAN_CACHE", str(tmp_path / "cache"))
    junk = tmp_path / "x.safetensors"
    junk.write_bytes(b"\x80\x04\x95")
    frames = tmp_path / "frames"
    frames.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(frames / "0.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "ref.png")
    for args in (("info", junk), ("sample", junk, "--out", tmp_path / "s.png"),
                 ("export", "onnx", junk, "--out", tmp_path / "e"),
                 ("propagate", frames, "--model", junk, "--ref", tmp_path / "ref.png", "--out", tmp_path / "p"),
                 ("bench", "encoder", "--ckpt", junk, "--backends", "torch")):
        code, _, err = run_main(monkeypatch, capsys, *args)
        assert code == 1 and "x.safetensors is truncated or corrupt" in err and err.count("\n") == 1, (args, err)


def test_bad_option_values_are_refused_before_any_work(tmp_path, monkeypatch, capsys):
    """Values Typer's types let through; each one sentence, and no run folder left behind."""

    train = ("train", "--preset", "tiny", "--data", "synthetic-faces", "--out", tmp_path / "run", "--steps", 1,
             "--lpips-random-backbone", "--device", "cpu")
    for args, message in [
        (("bench", "encoder", "--preset", "tiny", "--backends", "torch", "--threads", 0), "--threads must be at least 1"),
        (("bench", "encoder", "--preset", "tiny", "--backends", "ort-cpu", "--onnx-dir", tmp_path / "missing"),
         "--onnx-dir " + str(tmp_path / "missing") + " is not a folder"),
        (("eval-propagation", tmp_path / "any.safetensors", "--data", "synthetic-faces", "--device", "tpu"),
         "--device must be cpu or cuda[:N], got 'tpu'"),
        ((*train[:-1], "cudax"), "--device must be cpu or cuda[:N], got 'cudax'"),
        ((*train, "--batch", 0), "--batch 0 must give each process an even number"),
        ((*train, "--workers", -1), "--workers must be 0"),
        (("bench", "encoder", "--preset", "tiny", "--backends", "torch", "--max-time", -1),
         "--max-time must be greater than 0 seconds, got -1"),
    ]:
        code, _, err = run_main(monkeypatch, capsys, *args)
        assert code == 1 and message in err and len(err.strip().splitlines()) == 1, (args, err)
    assert not (tmp_path / "run").exists()
    (tmp_path / "afile").write_text("x")
    for out in (tmp_path / "afile" / "x.png", tmp_path / "afile" / "d" / "x.png"):
        message = f"Cannot write {out}: {tmp_path / 'afile'} is a file, not a folder."
        code, _, err = run_main(monkeypatch, capsys, "sample", "--preset", "tiny", "--out", out)
        assert code == 1 and message in err and len(err.strip().splitlines()) == 1, err


def test_interrupts_end_with_one_sentence(capsys, monkeypatch):
    """Ctrl-C in a command: 'Interrupted.' (Typer alone exits 130 silently); a command's own exit 130
    (training, which says why it stopped) gets no second line."""
    import typer

    from coordgan.cli.errors import run_app

    def app_raising(exc):
        app = typer.Typer()

        @app.command()
        def cmd():
            raise exc

        @app.command()
        def other():
            pass

        return app

    monkeypatch.setattr(sys, "argv", ["coordgan", "cmd"])
    for exc, expected in ((KeyboardInterrupt(), "Interrupted.\n"), (typer.Exit(130), "")):
        with pytest.raises(SystemExit) as info:
            run_app(app_raising(exc))
        assert info.value.code == 130 and capsys.readouterr().err == expected


@pytest.mark.parametrize("stop_signal", ["SIGTERM", "SIGHUP"])
def test_stop_signals_unwind_the_command_and_end_with_one_sentence(tmp_path, stop_signal):
    """SIGTERM and SIGHUP (the terminal closed) unwind a command like Ctrl-C (its cleanup runs), then
    one sentence and exit 128 + the signal; a second signal during the cleanup does not cut it short."""
    import signal
    import subprocess

    marker = tmp_path / "cleaned"
    code = (
        "import os, signal, time, typer\n"
        "from coordgan.cli.errors import run_app\n"
        "app = typer.Typer()\n"
        "@app.command()\n"
        "def cmd():\n"
        "    try:\n"
        f"        os.kill(os.getpid(), signal.{stop_signal}); time.sleep(10)\n"
        "    finally:\n"
        f"        os.kill(os.getpid(), signal.{stop_signal})\n"
        f"        open({str(marker)!r}, 'w').close()\n"
        "@app.command()\n"
        "def other():\n"
        "    pass\n"
        "import sys; sys.argv = ['coordgan', 'cmd']\n"
        "run_app(app)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    number = getattr(signal, stop_signal)
    assert done.returncode == 128 + number and done.stderr == f"Stopped by {stop_signal}.\n", done.stderr
    assert marker.exists()


def test_device_reading(monkeypatch):
    import torch

    from coordgan.devices import torch_device

    assert torch_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert torch_device(None) == "cpu"
    for asked in ("cuda", "cuda:0"):
        with pytest.raises(CoordGANError, match=f"--device {asked} needs a CUDA GPU and PyTorch sees none"):
            torch_device(asked)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert torch_device(None) == "cuda" and torch_device("cuda:1") == "cuda:1"
    with pytest.raises(CoordGANError, match=r"--device cuda:2 is beyond the 2 GPU\(s\) PyTorch sees; use cuda:0 to cuda:1"):
        torch_device("cuda:2")
    for odd in ("cuda:01", "cuda:\u0661", "cuda:", "CUDA"):  # torch.device would raise on these
        with pytest.raises(CoordGANError, match="--device must be cpu or cuda"):
            torch_device(odd)


def test_every_help_text_renders_as_written():
    """Typer renders help as Rich markup: a "[...]" in a help text is eaten or crashes `--help`
    (`bench triton --help` did). Every command's help and every option's must read as written, and
    every command's `--help` must exit 0."""
    import typer
    from rich.text import Text
    from typer.testing import CliRunner

    from coordgan.cli import app

    def walk(command, path):
        yield path, command
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, [*path, name])

    root = typer.main.get_command(app)
    runner = CliRunner()
    for path, command in walk(root, []):
        texts = [command.help or ""] + [getattr(p, "help", None) or "" for p in command.params]
        for text in texts:
            assert Text.from_markup(text).plain == text, (path, text)
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)


def test_names_print_as_written(tmp_path):
    """Output is not Rich markup: a checkpoint named like `tiny[v2]` keeps its brackets (it printed as
    `tiny.safetensors`, another file's name)."""
    ckpt = save(tmp_path / "tiny[v2].safetensors", TINY, build(TINY, which=("g", "e")))
    result = run_cli("info", str(ckpt))
    assert result.returncode == 0, result.stderr
    assert "tiny[v2].safetensors" in result.stdout


def test_help_reads_as_users_expect():
    """Usage lines name arguments in capitals (CKPT, [CKPT]), not Typer 0.2x's {ckpt}; options show
    click's value words (PATH, INTEGER, TEXT); flags and --help carry no <bool> tag. Every command."""
    import re

    import typer
    from typer.testing import CliRunner

    from coordgan.cli import app

    def walk(command, path):
        yield path, command
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, [*path, name])

    runner = CliRunner(env={"COLUMNS": "200"})
    for path, command in walk(typer.main.get_command(app), []):
        output = runner.invoke(app, [*path, "--help"]).output
        usage = next(line for line in output.splitlines() if "Usage:" in line)
        assert "{" not in usage and not re.search(r"<(bool|int|float|str|path|list)\b", output), (path, output)
        for param in command.params:
            if param.param_type_name == "argument" and param.required:
                assert re.search(rf"\s{(param.metavar or param.name).upper()}\b", usage), (path, usage)
    output = runner.invoke(app, ["export", "lookup", "--help"]).output
    assert re.search(r"--out\s+-o\s+PATH", output) and re.search(r"--classes\s+INTEGER", output), output
    assert re.search(r"--tau\s+FLOAT", output) and re.search(r"--mode\s+TEXT", output), output
    assert re.search(r"--fp16\s+float16", output) and re.search(r"--help\s+Show", output), output
