"""`coordgan train` and `coordgan train-encoder`.

torch, lpips and the trainers load inside the commands, so `coordgan --help` starts without
PyTorch. Under torchrun: `torchrun --nproc_per_node 8 -m coordgan.cli train ...`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from runtime.terminal import console


def _common(**kw):
    from coordgan.train.commands import Common

    return Common(**kw)


def _finish(run_fn):
    """Run a training function; a signal-stopped run exits 128 + signal number after its checkpoint."""
    from coordgan.train.loop import TrainingInterrupted

    try:
        summary = run_fn()
    except TrainingInterrupted as exc:
        if exc.main:
            print(str(exc), file=sys.stderr)
        raise typer.Exit(128 + int(exc.signum)) from None
    if not summary.get("main", True):
        return  # under torchrun only rank 0 reports
    step_time = summary.get("step_time")
    timing = f", median step {step_time:.3f} s ({summary['images_per_s']:.1f} images/s)" if step_time else ""
    skipped = f", {summary['skipped']} unreadable image file(s) skipped" if summary.get("skipped") else ""
    stopped = f" (stopped at the {summary['stopped']})" if summary.get("stopped") else ""
    print(f"done: step {summary['steps']}{stopped}; checkpoint {summary['checkpoint']}{timing}{skipped}")


_HELP = {
    "data": "Image folder (any image files, searched recursively), or 'synthetic-faces' for the procedural faces.",
    "out": "Run folder: checkpoints, logs, samples.",
    "steps": "Total optimizer steps of the run (a resumed run continues up to it).",
    "preset": "Model preset (celeba-128, celeba-512, ..., tiny); taken from the run on --resume.",
    "batch": "Global batch over all processes; each process gets an even share (default: the preset's).",
    "ckpt_every": "Checkpoint every N steps (and always at the end and on SIGTERM / SIGHUP / Ctrl-C; 0: only then).",
    "sample_every": "Write RUN_DIR/samples/step_XXXXXX.png every M steps (0: never).",
    "resume": "Continue the run in --out exactly where its last checkpoint left it.",
    "amp": "bfloat16 autocast (CUDA GPUs with bf16 support, or CPU).",
    "seed": "Seed of weights, latents, noise, crops and data order.",
    "lpips_net": "LPIPS backbone: vgg (as NVlabs/CoordGAN) or alex.",
    "lpips_weights": "torchvision ImageNet weights of the LPIPS backbone "
                     "(default: the torch hub cache, e.g. ~/.cache/torch/hub/checkpoints/vgg16-397923af.pth).",
    "lpips_random_backbone": "Random LPIPS backbone, for tests and machines without the ImageNet weights: the perceptual losses are then not LPIPS.",
    "init_from": "Start from a checkpoint at the canonical resolution (the 512 stage from a 128 run).",
    "freeze_structure": "Freeze the structure mapping and warping networks (default: frozen with --init-from).",
    "workers": "Data-loading processes (default: up to 4).",
    "device": "cpu or cuda (default: cuda when available).",
    "gen_ckpt": "Trained generator checkpoint (ours or the authors' .pt); kept frozen.",
    "loss": "Change a loss weight, NAME=VALUE (repeatable; e.g. --loss chamfer=100 --loss r1=0.05): of the "
            "preset, or with --resume of the run; checkpoints keep it.",
    "max_minutes": "Stop cleanly once training took this many minutes (checkpoint and sample grid at the end; "
                   "a later --resume continues): for a machine lent for a fixed time.",
    "hold_data": "Decode the whole data set once and keep it on the training device, so that no step waits for "
                 "data (default: on CUDA when it takes under a quarter of the free memory); --stream-data "
                 "reads each batch through --workers processes.",
    "enc_loss": "Change an encoder loss weight, NAME=VALUE (repeatable; enc_rec, enc_con, enc_texture): of the "
                "generator checkpoint's config, or with --resume of the run; checkpoints keep it.",
}


def _opt(default, flag: str, key: str | None = None):
    return typer.Option(default, flag, help=_HELP[key or flag.lstrip("-").replace("-", "_")])


def register(app: typer.Typer) -> None:
    """Add `train` and `train-encoder` to the main `coordgan` app."""

    @app.command("train")
    def train(
        data: str = _opt(..., "--data"),
        out: Path = _opt(..., "--out"),
        steps: int = _opt(..., "--steps"),
        preset: Optional[str] = _opt(None, "--preset"),
        batch: Optional[int] = _opt(None, "--batch"),
        ckpt_every: int = _opt(1000, "--ckpt-every"),
        sample_every: int = _opt(1000, "--sample-every"),
        resume: bool = _opt(False, "--resume"),
        amp: bool = _opt(False, "--amp"),
        seed: int = _opt(0, "--seed"),
        lpips_net: str = _opt("vgg", "--lpips-net"),
        lpips_weights: Optional[Path] = _opt(None, "--lpips-weights"),
        lpips_random_backbone: bool = _opt(False, "--lpips-random-backbone"),
        init_from: Optional[Path] = _opt(None, "--init-from"),
        freeze_structure: Optional[bool] = _opt(None, "--freeze-structure/--train-structure", "freeze_structure"),
        workers: Optional[int] = _opt(None, "--workers"),
        device: Optional[str] = _opt(None, "--device"),
        loss: Optional[list[str]] = typer.Option(None, "--loss", metavar="NAME=VALUE", help=_HELP["loss"]),
        max_minutes: Optional[float] = _opt(None, "--max-minutes"),
        hold_data: Optional[bool] = _opt(None, "--hold-data/--stream-data", "hold_data"),
    ):
        """Train CoordGAN (generator, discriminator, patch discriminator) on images."""
        from coordgan.train.commands import train_generator

        c = _common(data=data, out=out, steps=steps, batch=batch, ckpt_every=ckpt_every, sample_every=sample_every,
                    resume=resume, amp=amp, seed=seed, lpips_net=lpips_net, lpips_weights=lpips_weights,
                    lpips_random_backbone=lpips_random_backbone, workers=workers, device=device,
                    losses=tuple(loss or ()), max_minutes=max_minutes, hold_data=hold_data)
        _finish(lambda: train_generator(c, preset=preset, init_from=init_from, freeze_structure=freeze_structure,
                                        console=console(stderr=True)))

    @app.command("train-encoder")
    def train_encoder(
        data: str = _opt(..., "--data"),
        out: Path = _opt(..., "--out"),
        steps: int = _opt(..., "--steps"),
        gen_ckpt: Optional[Path] = _opt(None, "--gen-ckpt"),
        batch: Optional[int] = _opt(None, "--batch"),
        ckpt_every: int = _opt(1000, "--ckpt-every"),
        sample_every: int = _opt(1000, "--sample-every"),
        resume: bool = _opt(False, "--resume"),
        amp: bool = _opt(False, "--amp"),
        seed: int = _opt(0, "--seed"),
        lpips_net: str = _opt("vgg", "--lpips-net"),
        lpips_weights: Optional[Path] = _opt(None, "--lpips-weights"),
        lpips_random_backbone: bool = _opt(False, "--lpips-random-backbone"),
        workers: Optional[int] = _opt(None, "--workers"),
        device: Optional[str] = _opt(None, "--device"),
        loss: Optional[list[str]] = typer.Option(None, "--loss", metavar="NAME=VALUE", help=_HELP["enc_loss"]),
        max_minutes: Optional[float] = _opt(None, "--max-minutes"),
        hold_data: Optional[bool] = _opt(None, "--hold-data/--stream-data", "hold_data"),
    ):
        """Train the encoder (W structure + W+ texture codes) against a frozen generator."""
        from coordgan.train.commands import train_encoder as run_encoder

        c = _common(data=data, out=out, steps=steps, batch=batch, ckpt_every=ckpt_every, sample_every=sample_every,
                    resume=resume, amp=amp, seed=seed, lpips_net=lpips_net, lpips_weights=lpips_weights,
                    lpips_random_backbone=lpips_random_backbone, workers=workers, device=device,
                    losses=tuple(loss or ()), max_minutes=max_minutes, hold_data=hold_data)
        _finish(lambda: run_encoder(c, gen_ckpt=gen_ckpt, console=console(stderr=True)))
