"""The two training entry points behind `coordgan train` and `coordgan train-encoder`.

Both share one session set-up (processes, device, seeds, LPIPS, data, run folder) and the loop in
`coordgan.train.loop`; they differ only in the task they build. Everything a user can get wrong is
checked before step 0 and before anything is written.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from coordgan.config import ModelConfig, get_preset, loss_names, scaled_to_batch, with_losses
from coordgan.devices import torch_device
from coordgan.train import data as data_mod
from coordgan.train import distributed as ddp
from coordgan.train.loop import Run, RunOptions, options_record, prepare_out, train_loop
from coordgan.train.perceptual import build_lpips
from runtime.errors import CoordGANError


@dataclass
class Common:
    """Options both commands take (the CLI maps its flags onto these one to one)."""

    data: str
    out: Path
    steps: int
    batch: int | None = None  # global batch (over all processes); default: the config's
    ckpt_every: int = 1000
    sample_every: int = 1000  # 0: no sample grids
    resume: bool = False
    amp: bool = False
    seed: int = 0
    lpips_net: str = "vgg"
    lpips_weights: Path | None = None
    lpips_random_backbone: bool = False
    workers: int | None = None
    device: str | None = None
    progress: bool = True
    losses: tuple[str, ...] = ()  # 'NAME=VALUE' loss-weight changes (--loss), on the preset or the resumed run
    max_minutes: float | None = None  # stop cleanly once the steps took this long (a lent machine's budget)
    hold_data: bool | None = None  # decode the data once onto the device (None: on CUDA when it fits)


def _rank_device(device: str, d: ddp.Dist) -> str:
    """The checked --device for this process: under torchrun each rank takes its local GPU."""
    if device.startswith("cuda"):
        if d.enabled:
            if d.local_rank >= torch.cuda.device_count():
                raise CoordGANError(f"torchrun started local rank {d.local_rank}, but PyTorch sees "
                                    f"{torch.cuda.device_count()} GPU(s) here; start at most that many per machine.")
            device = f"cuda:{d.local_rank}"
        elif device == "cuda":
            device = f"cuda:{torch.cuda.current_device()}"  # set_device wants an index
        torch.cuda.set_device(torch.device(device))
        torch.backends.cudnn.benchmark = True  # fixed shapes every step
    return device


def _check_amp(amp: bool, device: str) -> list[str]:
    if not amp:
        return []
    if device.startswith("cuda") and not torch.cuda.is_bf16_supported():
        raise CoordGANError("--amp trains in bfloat16, which this GPU does not support; run without --amp.")
    if device == "cpu":
        return ["--amp on CPU: bfloat16 autocast (fast only on CPUs with AVX512-BF16 or AMX)"]
    return ["--amp: bfloat16 autocast (soft warp, Chamfer and R1 stay in float32)"]


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _check_common(c: Common, global_batch: int, d: ddp.Dist) -> int:
    for name, value in (("--steps", c.steps),):
        if value < 1:
            raise CoordGANError(f"{name} must be at least 1, got {value}.")
    if c.ckpt_every < 0 or c.sample_every < 0:
        raise CoordGANError("--ckpt-every and --sample-every must be >= 0 (0 turns them off).")
    if c.max_minutes is not None and not c.max_minutes > 0:
        raise CoordGANError(f"--max-minutes must be greater than 0, got {c.max_minutes:g}.")
    if c.workers is not None and c.workers < 0:
        raise CoordGANError(f"--workers must be 0 (load in the training process) or more, got {c.workers}.")
    per_rank, rest = divmod(global_batch, d.world)
    if rest or per_rank < 2 or per_rank % 2:
        where = f" over {d.world} processes" if d.enabled else ""
        raise CoordGANError(f"--batch {global_batch}{where} must give each process an even number of images "
                            "(at least 2: the swap losses pair them).")
    return per_rank


def _decode_workers(train_workers: int) -> int:
    """Processes that decode held data once: this process's share of the CPUs it may run on, less one
    (torchrun's processes on one machine split them), and never fewer than the training workers."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    share = cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(train_workers, share - 1)


def _session(c: Common, cfg: ModelConfig, kind: str, build_task, info: dict, hooks: dict | None, console,
             rescale: bool = False):
    """Set up everything, build the task with `build_task(cfg, run, lpips, dataset, record)`, run the loop.

    `rescale`: a new generator run at another --batch than its config's is scaled to it first
    (StyleGAN2-ADA's rule); a resumed run's config already holds the batch it was scaled to."""
    cfg, scaled = scaled_to_batch(cfg, c.batch) if rescale and c.batch else (cfg, None)
    cfg = with_losses(cfg, c.losses, kind)  # checkpoints keep the changed weights; a later --resume goes on with them
    requested = torch_device(c.device)  # checked before joining a process group
    d = ddp.init("cuda" if requested.startswith("cuda") else "cpu")
    loader = None
    try:
        device = _rank_device(requested, d)
        notes = _check_amp(c.amp, device) + ([scaled] if scaled else [])  # (before --loss's note: it applies after)
        per_rank = _check_common(c, cfg.batch if c.batch is None else c.batch, d)
        opts = RunOptions(out=Path(c.out), steps=c.steps, batch=per_rank, ckpt_every=c.ckpt_every,
                          sample_every=c.sample_every, resume=c.resume, amp=c.amp, seed=c.seed, device=device,
                          workers=data_mod.default_workers() if c.workers is None else c.workers,
                          progress=c.progress, max_minutes=c.max_minutes)
        record = prepare_out(opts, d)
        lpips, source = build_lpips(c.lpips_net, c.lpips_weights, c.lpips_random_backbone, device)
        notes.append(source.description)
        if c.losses:
            weights = ", ".join(f"{n}={getattr(cfg.losses, n)}" for n in loss_names(kind))
            notes.append(f"loss weights set by --loss: {', '.join(c.losses)}; now {weights}")
        dataset = data_mod.make_dataset(c.data, cfg.size)
        # decoded once, by every core but one (the training workers are for streaming)
        held = data_mod.hold(dataset, cfg.size, device, _decode_workers(opts.workers), c.hold_data)
        notes += [held.note] if held else []
        loader = data_mod.ResumableLoader(dataset, per_rank, seed=c.seed, rank=d.rank, world=d.world,
                                          workers=opts.workers, held=held)
        run = Run(opts, d, hooks or {})
        _seed_all(c.seed)  # identical initial weights on every rank (then broadcast to be sure)
        task, more = build_task(cfg, run, lpips, dataset, record)
        notes += more
        ddp.broadcast_parameters(d, *task.checkpoint_networks().values())
        _seed_all(c.seed + 1_000_003 * (d.rank + 1))  # per-rank latents, noise and crops
        run_info = {"kind": kind, "config": dataclasses.asdict(cfg), "options": options_record(opts),
                    "global_batch": per_rank * d.world, "world_size": d.world, "lpips": dataclasses.asdict(source),
                    "data": data_mod.data_source(c.data), "torch": torch.__version__,
                    "python": platform.python_version(), "notes": notes, **info}
        summary = train_loop(task, run, loader, record, run_info, console)
        # Rank 0 may still be writing its last checkpoint: no rank tears the group down before all are
        # done (a gloo process aborted at exit once in CI without this; 60 local runs did not repeat it).
        ddp.barrier(d)
        return summary
    finally:
        if loader is not None:
            loader.close()
        ddp.shutdown(d)


_COMMAND = {"generator": "train", "encoder": "train-encoder"}


def _resume_checkpoint(c: Common, kind: str):
    """The checkpoint --resume continues, refused when it is another kind of run or trained on other data
    (what may change on a resume, such as --loss or --steps, is recorded in train.log and run.json)."""
    from coordgan.checkpoint import load
    from coordgan.train.loop import latest

    record = latest(Path(c.out)) if Path(c.out).exists() else None
    if record is None:
        raise CoordGANError(f"Nothing to resume in {c.out}: no checkpoint was written there.")
    ck = load(record["networks"])
    made = ck.metadata.get("kind")
    if made != kind:
        command = f"coordgan {_COMMAND.get(made, made)}"
        raise CoordGANError(f"{c.out} holds {made} training (`{command}`), not {kind} training: resume it with "
                            f"`{command} --resume`, or give another --out.")
    data = (ck.metadata.get("trained") or {}).get("data")
    if data is not None and data_mod.data_source(data) != data_mod.data_source(c.data):
        raise CoordGANError(f"The run in {c.out} trains on --data {data}, not {c.data}: resume it with the same "
                            "data, or start a new run in another --out.")
    return ck


def train_generator(c: Common, preset: str | None = None, init_from: Path | None = None,
                    freeze_structure: bool | None = None, cfg: ModelConfig | None = None,
                    hooks: dict | None = None, console=None) -> dict:
    """Train G, D and the patch D; `cfg` overrides the preset (tests, custom configs)."""
    from coordgan.train.trainer import GeneratorTraining
    from coordgan.train.trainer import init_from as apply_init

    resumed = _resume_checkpoint(c, "generator") if c.resume else None
    if resumed is not None:
        if preset is not None and get_preset(preset).name != resumed.config.name:
            raise CoordGANError(f"The run in {c.out} is of preset {resumed.config.name!r}, not {preset!r}: resume it "
                                "without --preset, or start a new run in another --out.")
        cfg = resumed.config
        freeze = bool(resumed.metadata.get("freeze_structure", False))
    else:
        if cfg is None:
            if preset is None:
                raise CoordGANError("Give --preset NAME (e.g. celeba-128, or tiny for a quick CPU run).")
            cfg = get_preset(preset)
        freeze = bool(init_from) if freeze_structure is None else freeze_structure
    source = None
    if init_from is not None and resumed is None:
        from coordgan.checkpoint import load

        source = load(init_from)

    def build_task(cfg, run, lpips, dataset, record):
        task = GeneratorTraining(cfg, run, lpips, freeze_structure=freeze)
        notes = [f"--init-from {init_from} ignored: the run resumes from its own checkpoint"] if (
            resumed is not None and init_from is not None) else []
        if resumed is not None:
            task.load_networks(resumed.networks)
        elif source is not None:
            notes += apply_init(task, source)
        return task, notes

    return _session(c, cfg, "generator", build_task,
                    {"init_from": str(init_from) if init_from else None, "freeze_structure": freeze},
                    hooks, console, rescale=resumed is None)


def train_encoder(c: Common, gen_ckpt: Path | None = None, hooks: dict | None = None, console=None) -> dict:
    """Train the encoder against a frozen generator (the checkpoint's g_ema, else g)."""
    from coordgan.checkpoint import load
    from coordgan.train.encoder_trainer import EncoderTraining

    resumed = _resume_checkpoint(c, "encoder") if c.resume else None
    if resumed is not None:
        generator, cfg = resumed.require("g_ema"), resumed.config
        made_by = resumed.metadata.get("generator")
    else:
        if gen_ckpt is None:
            raise CoordGANError("Give --gen-ckpt CKPT, the trained generator the encoder learns to invert.")
        ck = load(gen_ckpt)
        generator, cfg = ck.generator, ck.config
        made_by = ck.metadata.get("trained")  # how the frozen generator was trained, kept with the encoder

    def build_task(cfg, run, lpips, dataset, record):
        samples = torch.stack([dataset[(i % len(dataset), False)][0] for i in range(4)])
        task = EncoderTraining(cfg, run, lpips, generator, samples, generator_trained=made_by)
        if resumed is not None:
            task.load_networks(resumed.networks)
        notes = []
        if resumed is not None and gen_ckpt is not None:
            notes.append(f"--gen-ckpt {gen_ckpt} ignored: the frozen generator comes from the run's checkpoint")
        return task, notes

    return _session(c, cfg, "encoder", build_task, {"gen_ckpt": str(gen_ckpt) if gen_ckpt else None},
                    hooks, console)
