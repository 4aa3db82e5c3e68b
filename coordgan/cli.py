"""The `coordgan` command line.

Imports are lazy inside each command: `coordgan --help` must start without PyTorch, and a
deployment box runs the runtime commands without it. User errors (CoordGANError) print one
sentence and exit 1, never a traceback.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Optional

import typer

from runtime.errors import CoordGANError

app = typer.Typer(
    help="CoordGAN from PyTorch training to production inference.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register_subcommands() -> None:
    from coordgan.bench_cli import register as register_bench
    from coordgan.demo import register as register_demo
    from coordgan.eval_cli import register as register_eval
    from coordgan.propagate_cli import register as register_propagate
    from coordgan.train.cli import register as register_train
    from export.cli import app as export_app
    from triton_models.build_cli import register as register_triton
    from triton_models.serve_cli import register as register_serve

    register_train(app)
    register_eval(app)
    register_propagate(app)
    register_bench(app)
    register_triton(app)
    register_serve(app)
    register_demo(app)
    app.add_typer(export_app, name="export")


def _console():
    from rich.console import Console

    return Console()


@app.command()
def info(
    ckpt: Path = typer.Argument(..., help="Checkpoint: ours (.safetensors) or the authors' public .pt."),
    preset: Optional[str] = typer.Option(None, help="Preset to check a public checkpoint against."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
):
    """Preset, config, parameter counts and SHA-256 of a checkpoint."""
    import dataclasses
    import json

    from coordgan.checkpoint import load
    from coordgan.models import count_parameters

    ck = load(ckpt, preset=preset)
    counts = {k: count_parameters(v) for k, v in ck.networks.items()}
    record = {"path": str(ck.path), "source": ck.source, "preset": ck.config.name, "sha256": ck.sha256,
              "parameters": counts, "config": dataclasses.asdict(ck.config), "metadata": ck.metadata}
    if json_out:
        print(json.dumps(record, indent=2))
        return
    from rich.table import Table

    table = Table(title=f"{ck.path.name} ({ck.source} checkpoint)")
    table.add_column("field")
    table.add_column("value", overflow="fold")
    table.add_row("preset", ck.config.name)
    table.add_row("sha256", ck.sha256)
    for key, n in counts.items():
        table.add_row(f"parameters [{key}]", f"{n:,}")
    cfg = ck.config
    table.add_row("image size", f"{cfg.size} (canonical grid {cfg.base_size}x{cfg.base_size})")
    table.add_row("style dim / W+ codes", f"{cfg.style_dim} / {cfg.n_latent}")
    _console().print(table)


@app.command()
def sample(
    ckpt: Optional[Path] = typer.Argument(None, help="Checkpoint; omit and pass --preset for random weights."),
    out: Path = typer.Option(Path("sample.png"), "--out", "-o", help="PNG to write."),
    preset: Optional[str] = typer.Option(None, help="Preset (random weights when no checkpoint is given)."),
    n: int = typer.Option(4, min=1, max=16, help="Structure and texture codes per grid side."),
    seed: int = typer.Option(0, help="Seed of the latent codes."),
):
    """Texture-swap / structure-swap grid with colour-coded correspondence maps."""
    import torch
    from PIL import Image

    from runtime.fileio import atomic_write
    from coordgan.visualize import swap_grid

    if ckpt is None and preset is None:
        raise CoordGANError("Give a checkpoint, or --preset NAME to sample a model with random weights.")
    if ckpt is not None:
        from coordgan.checkpoint import load

        generator = load(ckpt, preset=preset).generator
    else:
        from coordgan.config import get_preset
        from coordgan.models import Generator

        torch.manual_seed(seed)
        generator = Generator(get_preset(preset)).eval()
    grid = swap_grid(generator, n=n, seed=seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out) as f:
        Image.fromarray(grid).save(f, format="PNG")
    print(f"wrote {out} ({grid.shape[1]}x{grid.shape[0]}): top row correspondence maps; "
          "each row one texture across structures")


_register_subcommands()


_terminated: list[bool] = []


def _on_sigterm(signum, frame):
    # Unwind like Ctrl-C (temp files removed, no half-written output left); Python's default would
    # end the process on the spot. A second SIGTERM must not cut that cleanup short. Training and
    # `serve` install their own handlers while they run.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _terminated.append(True)
    raise KeyboardInterrupt


def run_app(typer_app: typer.Typer) -> None:
    """Run a Typer app with the project's error contract: one sentence and exit 1, no traceback.

    Ctrl-C and SIGTERM end a command with one sentence too (exit 130 and 143); Typer turns the
    KeyboardInterrupt into a silent exit 130, so the message is printed here.
    """
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    try:
        typer_app()
    except CoordGANError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(1)
    except FileExistsError as exc:  # mkdir(exist_ok=True) where a file has the folder's name
        print(f"Error: cannot make the folder {exc.filename}: a file of that name exists.", file=sys.stderr)
        sys.exit(1)
    except NotADirectoryError as exc:
        print(f"Error: cannot use the path {exc.filename}: part of it is a file, not a folder.", file=sys.stderr)
        sys.exit(1)
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        print(f"Error: cannot access{where}: {exc.strerror or exc}.", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        _stopped()
    except SystemExit as exc:
        # Typer's silent exit for Ctrl-C, not a command's own exit 130 (training says why it stopped)
        if exc.code == 130 and isinstance(getattr(exc.__context__, "__cause__", None), KeyboardInterrupt):
            _stopped()
        raise
    finally:
        if main_thread:  # callers in-process (tests) get theirs back
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        _terminated.clear()


def _stopped():
    if _terminated:
        print("Stopped by SIGTERM.", file=sys.stderr)
        sys.exit(143)
    print("Interrupted.", file=sys.stderr)
    sys.exit(130)


def main():
    run_app(app)


if __name__ == "__main__":
    main()
