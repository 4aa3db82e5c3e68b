"""`coordgan info` and `coordgan sample`: what a checkpoint is, and what its generator draws."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from runtime.errors import CoordGANError
from runtime.terminal import console


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
        table.add_row(f"parameters ({key})", f"{n:,}")
    cfg = ck.config
    table.add_row("image size", f"{cfg.size} (canonical grid {cfg.base_size}x{cfg.base_size})")
    table.add_row("style dim / W+ codes", f"{cfg.style_dim} / {cfg.n_latent}")
    for name, trained in (("generator", ck.metadata.get("generator")), (None, ck.metadata.get("trained"))):
        if trained:
            table.add_row(f"trained ({name or trained['kind']})", trained_line(trained))
    console().print(table)


def trained_line(t: dict) -> str:
    """One line of where a checkpoint came from: its `trained` record (coordgan.train.loop.save_checkpoint)."""
    return (f"{t['steps']:,} steps, {t['images_seen']:,} images (batch {t['global_batch']}, {t['processes']} "
            f"process(es)) in {t['minutes']:g} min on {t['device']}; data {t['data']}, LPIPS {t['lpips']}")


def sample(
    ckpt: Optional[Path] = typer.Argument(None, help="Checkpoint; omit and pass --preset for random weights."),
    out: Path = typer.Option(Path("sample.png"), "--out", "-o", help="PNG to write (a .png name)."),
    preset: Optional[str] = typer.Option(None, help="Preset (random weights when no checkpoint is given)."),
    n: int = typer.Option(4, min=1, max=16, help="Structure and texture codes per grid side."),
    seed: int = typer.Option(0, help="Seed of the latent codes."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file."),
):
    """Texture-swap / structure-swap grid with colour-coded correspondence maps."""
    import torch
    from PIL import Image

    from coordgan.visualize import swap_grid
    from runtime.fileio import atomic_write

    if ckpt is None and preset is None:
        raise CoordGANError("Give a checkpoint, or --preset NAME to sample a model with random weights.")
    _check_png_out(out, overwrite)
    if ckpt is not None:
        from coordgan.checkpoint import load

        generator = load(ckpt, preset=preset).generator
    else:
        from coordgan.config import get_preset
        from coordgan.models import Generator

        torch.manual_seed(seed)
        generator = Generator(get_preset(preset)).eval()
    grid = swap_grid(generator, n=n, seed=seed)
    with atomic_write(out) as f:
        Image.fromarray(grid).save(f, format="PNG")
    print(f"wrote {out} ({grid.shape[1]}x{grid.shape[0]}): top row correspondence maps; "
          "each row one texture across structures")


def _check_png_out(out: Path, overwrite: bool) -> None:
    """Before any work: a PNG name (the grid is lossless PNG; a .jpg holding PNG bytes misleads every
    viewer), and an existing file replaced only with --overwrite, as every other command asks."""
    from runtime.fileio import check_target

    if out.suffix.lower() != ".png":
        raise CoordGANError(f"--out {out}: sample writes a PNG; give a file name ending in .png.")
    check_target(out, make_folder=True)
    if out.exists() and not overwrite:
        raise CoordGANError(f"{out} exists; pass --overwrite to replace it.")


def register(app: typer.Typer) -> None:
    app.command("info")(info)
    app.command("sample")(sample)
