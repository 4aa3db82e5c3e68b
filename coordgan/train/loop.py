"""The training-loop plumbing shared by the generator and the encoder trainers.

A trainer (a "task") owns its networks, optimizers and one `train_step`; this module owns the
rest: the run folder, checkpoints (networks through `coordgan.checkpoint.save`, plus a training
state of optimizers, step, loader position and every RNG state, safetensors + JSON, no pickle),
exact resume, the finite-loss guard, SIGTERM / Ctrl-C, the JSONL log, sample grids, the progress
bar and the data-parallel collectives.

Run folder:
    run.json                    config, options, LPIPS source, data (as the run trains now; each resume's changes)
    train.log                   human-readable events (start, resume, checkpoints, skips, stops)
    log.jsonl                   one line per step: every loss term, learning rates, step time
    samples/step_000100.png     sample grids
    checkpoints/step_000100.safetensors        networks + config (`coordgan info/sample` read it)
    checkpoints/step_000100.state.safetensors  training state
    latest.json                 the last complete checkpoint pair (replaced atomically, last)

Steps are counted from 1 in every name and message: "step 100" is the 100th optimizer step,
`step_000100` the state after it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
from torch import nn

from coordgan.train import distributed as ddp
from coordgan.train.state import load_tree, rng_state, save_tree, set_rng_state
from runtime.errors import STOP_SIGNALS, CoordGANError
from runtime.fileio import atomic_write

CHECKPOINTS = "checkpoints"
LATEST = "latest.json"


class NonFiniteLoss(Exception):
    def __init__(self, step: int, names: list[str], values: list[float]):
        self.step, self.names, self.values = step, names, values
        super().__init__(", ".join(f"{n} = {v}" for n, v in zip(names, values)))


class TrainingInterrupted(Exception):
    main = True  # False on the ranks > 0 of a torchrun job, which stay quiet

    def __init__(self, signame: str, signum: int, step: int, path: Path | None):
        self.signame, self.signum, self.step, self.path = signame, signum, step, path
        where = f"checkpoint written to {path}" if path else "no checkpoint written"
        super().__init__(f"Stopped by {signame} after step {step}; {where}; continue with --resume.")


@dataclass
class RunOptions:
    out: Path
    steps: int
    batch: int
    ckpt_every: int = 1000
    sample_every: int = 0  # 0: no sample grids
    resume: bool = False
    amp: bool = False
    seed: int = 0
    device: str = "cpu"
    workers: int = 0
    keep: int = 2  # checkpoint pairs kept on disk
    progress: bool = True
    max_minutes: float | None = None  # stop cleanly (checkpoint, sample grid) once the steps took this long


class Task(Protocol):
    kind: str  # "generator" | "encoder"
    cfg: object

    def checkpoint_networks(self) -> dict[str, nn.Module]: ...
    def load_networks(self, networks: dict[str, nn.Module]) -> None: ...
    def optimizers(self) -> dict[str, torch.optim.Optimizer]: ...
    def train_step(self, it: int, images: torch.Tensor) -> dict[str, float]: ...
    def sample_grid(self) -> np.ndarray: ...
    def sample_stats(self) -> str: ...  # one line for train.log beside each sample grid ("" for none)


@dataclass
class Run:
    """Helpers a task calls inside train_step (optimize, autocast) and the loop around it."""

    opts: RunOptions
    dist: ddp.Dist = field(default_factory=ddp.Dist)
    hooks: dict[str, Callable] = field(default_factory=dict)  # test hooks: before_step(step, task)

    @property
    def device(self) -> torch.device:
        return torch.device(self.opts.device)

    def autocast(self):
        if not self.opts.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def optimize(self, it: int, losses: dict[str, torch.Tensor], weights: dict[str, float],
                 optimizer: torch.optim.Optimizer, prefix: str = "") -> dict[str, float]:
        """Check every term is finite (on every rank), then backward the weighted sum and step.

        The check comes before backward so a NaN never reaches the weights; logged values are the
        raw (unweighted) terms averaged over ranks, plus `<prefix>total`.
        """
        names = list(losses)
        raw = torch.stack([losses[n].detach().float().reshape(()) for n in names])
        raw = ddp.mean_across(self.dist, raw).tolist()
        bad = [(n, v) for n, v in zip(names, raw) if not np.isfinite(v)]
        if bad:
            raise NonFiniteLoss(it + 1, [n for n, _ in bad], [v for _, v in bad])
        total = sum(weights[n] * losses[n].float() for n in names if weights.get(n, 0.0) != 0.0)
        optimizer.zero_grad(set_to_none=True)
        if isinstance(total, torch.Tensor) and total.requires_grad:
            total.backward()
            params = [p for group in optimizer.param_groups for p in group["params"]]
            ddp.average_gradients(self.dist, params)
            optimizer.step()
        record = dict(zip(names, raw))
        record[f"{prefix}total"] = sum(weights.get(n, 0.0) * v for n, v in zip(names, raw))
        return record


# --------------------------------------------------------------------------------------------------
# Checkpoints


def latest(out: Path) -> dict | None:
    path = Path(out) / LATEST
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        return {"step": int(record["step"]), "networks": Path(out) / record["networks"],
                "state": Path(out) / record["state"]}
    except (ValueError, KeyError, TypeError):
        raise CoordGANError(f"{path} is corrupt; point it at a checkpoint pair in {Path(out) / CHECKPOINTS} "
                            "or start a new run.") from None


def _gather_rng(d: ddp.Dist) -> list[dict]:
    state = rng_state()
    if not d.enabled:
        return [state]
    import torch.distributed as dist

    states = [None] * d.world
    dist.all_gather_object(states, state)  # between our own processes: no untrusted data
    return states


def _check_ranks_agree(task: Task, d: ddp.Dist) -> None:
    """Every rank must hold the same weights (gradients are averaged, steps are identical)."""
    if not d.enabled:
        return
    import torch.distributed as dist

    params = [p for net in task.checkpoint_networks().values() for p in net.parameters()]
    checksum = torch.stack([p.detach().double().sum() for p in params]).sum().reshape(1)
    gathered = [torch.zeros_like(checksum) for _ in range(d.world)]
    dist.all_gather(gathered, checksum)
    if any(not torch.equal(g, gathered[0]) for g in gathered):
        raise RuntimeError(f"data-parallel ranks hold different weights: checksums {[g.item() for g in gathered]}")


def _check_parameters_finite(task: Task, step: int) -> None:
    for key, net in task.checkpoint_networks().items():
        for name, p in net.named_parameters():
            if not bool(torch.isfinite(p).all()):
                raise NonFiniteLoss(step, [f"parameter {key}.{name}"], [float("nan")])


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({os.cpu_count()} cores)"


def save_checkpoint(task: Task, run: Run, step: int, loader_state: dict, extra: dict,
                    trained: dict | None = None) -> Path | None:
    """Collective (all ranks call it); rank 0 writes the pair, then points latest.json at it.

    `trained` (how many images, how long, on what) goes into the networks file's metadata, beside
    the task's own, so that `coordgan info` says where a checkpoint came from."""
    from coordgan.checkpoint import save

    _check_parameters_finite(task, step)
    _check_ranks_agree(task, run.dist)
    rngs = _gather_rng(run.dist)
    if not run.dist.is_main:
        return None
    out = run.opts.out
    ck_dir = out / CHECKPOINTS
    ck_dir.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:06d}"
    net_path = ck_dir / f"{name}.safetensors"
    state_path = ck_dir / f"{name}.state.safetensors"
    meta = {"step": step, "kind": task.kind, **getattr(task, "metadata", {}), **({"trained": trained} if trained else {})}
    save(net_path, task.cfg, task.checkpoint_networks(), metadata=meta)
    save_tree(state_path, {
        "step": step, "kind": task.kind, "world": run.dist.world, "seed": run.opts.seed,
        "global_batch": run.opts.batch * run.dist.world,
        "optimizers": {k: opt.state_dict() for k, opt in task.optimizers().items()},
        "rng": rngs, "loader": loader_state, "extra": extra,
    })
    with atomic_write(out / LATEST, "w") as f:  # last: a crash before this leaves the previous pair current
        json.dump({"step": step, "networks": f"{CHECKPOINTS}/{net_path.name}",
                   "state": f"{CHECKPOINTS}/{state_path.name}"}, f)
    _prune(ck_dir, run.opts.keep, keep_names={net_path.name, state_path.name})
    return net_path


def _prune(ck_dir: Path, keep: int, keep_names: set[str]) -> None:
    stems = {p.name.split(".")[0] for p in ck_dir.glob("step_*.safetensors")}
    steps = sorted(stems, key=lambda stem: int(stem.removeprefix("step_")))  # numeric: past 999999 too
    for stem in steps[:-keep] if keep > 0 else []:
        for p in ck_dir.glob(f"{stem}.*"):
            if p.name not in keep_names:
                p.unlink(missing_ok=True)


def load_training_state(task: Task, run: Run, record: dict) -> dict:
    """Restore optimizers and RNGs from a checkpoint pair; returns the state tree."""
    state = load_tree(record["state"])
    if state.get("kind") != task.kind:
        raise CoordGANError(f"{record['state']} is the state of a {state.get('kind')} run, "
                            f"not of {task.kind} training.")
    batch = run.opts.batch * run.dist.world
    if state.get("global_batch", batch) != batch:
        raise CoordGANError(f"The run in {run.opts.out} was trained with --batch {state['global_batch']}; "
                            f"resume it with the same batch, not {batch}.")
    for key, opt in task.optimizers().items():
        opt.load_state_dict(state["optimizers"][key])
    rngs = state["rng"]
    if len(rngs) == run.dist.world:
        set_rng_state(rngs[run.dist.rank])
    else:  # resuming on another number of processes: go on, but not bit for bit
        torch.manual_seed(run.opts.seed * 7919 + run.dist.rank * 104_729 + state["step"])
    return state


# --------------------------------------------------------------------------------------------------
# Logs, samples, progress, signals


class RunLog:
    def __init__(self, out: Path, enabled: bool, console=None):
        self.out, self.enabled, self.console = out, enabled, console

    def event(self, message: str, show: bool = False) -> None:
        """A line of train.log; `show`: printed on the console too."""
        if not self.enabled:
            return
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self.out / "train.log", "a") as f:
            f.write(f"{stamp} {message}\n")
        if show and self.console is not None:
            self.console.print(message, markup=False, highlight=False)

    def step(self, record: dict) -> None:
        if self.enabled:
            with open(self.out / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def truncate_steps(self, after: int) -> None:
        """Drop log lines of steps past the checkpoint a run resumes from (they are redone)."""
        path = self.out / "log.jsonl"
        if not self.enabled or not path.is_file():
            return
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        kept = [ln for ln in lines if json.loads(ln).get("step", 0) <= after]
        if len(kept) != len(lines):
            with atomic_write(path, "w") as f:
                f.write("".join(ln + "\n" for ln in kept))


def write_png(path: Path, grid: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        Image.fromarray(grid).save(f, format="PNG")


class _Signals:
    """SIGTERM, SIGHUP (the terminal closed) / first Ctrl-C: finish the step, checkpoint, stop. Second
    Ctrl-C: stop now."""

    def __init__(self):
        self.received: tuple[str, int] | None = None
        self._previous = {}

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (*STOP_SIGNALS, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = (signal.Signals(signum).name, signum)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _progress(enabled: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Speed(ProgressColumn):
        def render(self, task):
            speed = task.finished_speed or task.speed
            return Text(f"{speed:.2f} it/s" if speed else "-.-- it/s")

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Speed(),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    TextColumn("{task.fields[losses]}"), disable=not enabled)


# --------------------------------------------------------------------------------------------------
# The loop


def prepare_out(opts: RunOptions, d: ddp.Dist) -> dict | None:
    """Check the run folder against --resume; returns the checkpoint record to resume from."""
    out = Path(opts.out)
    record = latest(out) if out.exists() else None
    if opts.resume and record is None:
        raise CoordGANError(f"Nothing to resume in {out}: it holds no {LATEST} (no checkpoint was written).")
    if not opts.resume and record is not None:
        raise CoordGANError(f"{out} already holds a run (checkpoint of step {record['step']}); "
                            "pass --resume to continue it or choose another --out.")
    if record is not None and record["step"] > opts.steps:
        raise CoordGANError(f"The run in {out} is at step {record['step']}, past --steps {opts.steps}.")
    return record


def _record_resume(path: Path, run_info: dict, start: int) -> None:
    """run.json holds the run as it trains now, the notes of its start, and per resume its step, its notes
    and what it changed (a --loss weight, --steps, the LPIPS source...): every deliberate change stays on record."""
    try:
        before = json.loads(path.read_text())
    except (OSError, ValueError):
        before = {}  # the record was lost: every value of this session counts as changed
    now = json.loads(json.dumps(run_info, default=str))
    resume = {"step": start, "changed": _changes(before, now), "notes": now.pop("notes", [])}
    with atomic_write(path, "w") as f:
        json.dump({**now, "notes": before.get("notes", []), "resumes": before.get("resumes", []) + [resume]},
                  f, indent=2)


def _changes(before: dict, now: dict, prefix: str = "") -> dict:
    """{dotted key: [before, now]} for every value of `now` that differs from `before`."""
    changed = {}
    for key, value in now.items():
        old = before.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            changed.update(_changes(old, value, f"{prefix}{key}."))
        elif old != value and key not in ("notes", "resumes"):
            changed[f"{prefix}{key}"] = [old, value]
    return changed


@dataclass
class _Tally:
    """How far the run got: kept in every checkpoint (training state, networks' metadata) and the summary."""

    step: int = 0
    skipped: set[str] = field(default_factory=set)  # unreadable image files
    seen: int = 0  # images, over all processes
    seconds: float = 0.0  # spent in steps
    checkpoint: Path | None = None  # the last one written or resumed from
    checkpoint_step: int = 0

    def extra(self) -> dict:
        return {"skipped": sorted(self.skipped), "images_seen": self.seen, "train_seconds": round(self.seconds, 3)}


def _begin(task: Task, run: Run, loader, record: dict | None, run_info: dict, log: RunLog) -> _Tally:
    """Write run.json of a new run, or restore a resumed one (optimizers, RNGs, loader, tally)."""
    d = run.dist
    if record is None:
        if d.is_main:
            with atomic_write(run.opts.out / "run.json", "w") as f:
                json.dump(run_info, f, indent=2, default=str)
        log.event(f"started {task.kind} training: {json.dumps(run_info, default=str)}")
        return _Tally()
    state = load_training_state(task, run, record)
    loader.load_state(state["loader"])
    extra = state["extra"]
    tally = _Tally(state["step"], set(extra["skipped"]), extra["images_seen"], extra["train_seconds"],
                   record["networks"], state["step"])
    if d.is_main:
        _record_resume(run.opts.out / "run.json", run_info, tally.step)
    log.truncate_steps(tally.step)
    log.event(f"resumed from {record['networks']} at step {tally.step}", show=True)
    if len(state["rng"]) != d.world:
        log.event(f"the run was saved with {len(state['rng'])} process(es) and resumes with {d.world}: "
                  "it continues, but not bit for bit", show=True)
    return tally


def _trained(task: Task, run: Run, run_info: dict, tally: _Tally) -> dict:
    """How the networks of a checkpoint were trained, for its metadata (`coordgan info` shows it)."""
    lpips = run_info.get("lpips") or {}
    backbone = "random backbone" if lpips.get("backbone") == "random" else "ImageNet backbone"
    return {"kind": task.kind, "steps": tally.step, "images_seen": tally.seen, "minutes": round(tally.seconds / 60, 2),
            "device": device_name(run.device), "processes": run.dist.world,
            "global_batch": run.opts.batch * run.dist.world, "data": run_info.get("data"),
            "lpips": f"{lpips.get('net')}, {backbone}"}


def _after_step(task: Task, run: Run, loader, log: RunLog, run_info: dict, tally: _Tally,
                signalled: tuple[str, int] | None, out_of_time: bool) -> str | None:
    """Collective, after every step: the checkpoint (when due, at the last step and before any stop), the
    sample grid (when due and at the time budget), then the stop: returns why at the time budget, raises
    TrainingInterrupted at a signal (`signalled`, on any process), else returns None."""
    opts, d, step = run.opts, run.dist, tally.step
    due = step % opts.ckpt_every == 0 if opts.ckpt_every > 0 else False
    if due or signalled or out_of_time or step == opts.steps:
        trained = _trained(task, run, run_info, tally)
        tally.checkpoint = save_checkpoint(task, run, step, loader.state(), tally.extra(), trained)
        tally.checkpoint_step = step
        log.event(f"checkpoint {tally.checkpoint} (step {step})")
    sample_due = opts.sample_every > 0 and step % opts.sample_every == 0
    if (sample_due or out_of_time) and d.is_main:
        write_png(opts.out / "samples" / f"step_{step:06d}.png", task.sample_grid())
        if stats := task.sample_stats():
            log.event(f"step {step}: {stats}")
    if signalled:
        name, num = signalled
        log.event(f"stopped by {name} after step {step}", show=True)
        exc = TrainingInterrupted(name, num, step, tally.checkpoint)
        exc.main = d.is_main
        raise exc
    if out_of_time:
        log.event(f"stopped at the time budget of {opts.max_minutes:g} min after step {step}", show=True)
        return f"time budget ({opts.max_minutes:g} min)"
    return None


def train_loop(task: Task, run: Run, loader, record: dict | None, run_info: dict, console=None) -> dict:
    """Run steps until opts.steps; returns a summary. Raises TrainingInterrupted or CoordGANError."""
    opts, d = run.opts, run.dist
    out = Path(opts.out)
    if d.is_main:
        out.mkdir(parents=True, exist_ok=True)
    ddp.barrier(d)
    log = RunLog(out, d.is_main, console)
    tally = _begin(task, run, loader, record, run_info, log)
    for line in run_info.get("notes", []):
        log.event(line, show=True)

    start, stopped, step_times = tally.step, None, []
    images_per_step = opts.batch * d.world
    deadline = time.monotonic() + 60 * opts.max_minutes if opts.max_minutes else None
    with _Signals() as signals, _progress(opts.progress and d.is_main) as bar:
        bar_task = bar.add_task(f"{task.kind}", total=opts.steps, completed=start, losses="")
        try:
            for it in range(start, opts.steps):
                tally.step = step = it + 1
                if "before_step" in run.hooks:
                    run.hooks["before_step"](step, task)
                t0 = time.perf_counter()
                images, bad = loader.next()
                t_data = time.perf_counter() - t0
                for path in bad:
                    if path not in tally.skipped:
                        tally.skipped.add(path)
                        log.event(f"skipped unreadable image file {path}", show=True)
                record_step = task.train_step(it, images.to(run.device, non_blocking=True))
                dt = time.perf_counter() - t0
                step_times.append(dt)
                tally.seen, tally.seconds = tally.seen + images_per_step, tally.seconds + dt
                lrs = {f"lr_{k}": opt.param_groups[0]["lr"] for k, opt in task.optimizers().items()}
                # images/s of the step (all processes), and the share of it spent waiting for data
                log.step({"step": step, **record_step, **lrs, "time": round(dt, 6), "data_time": round(t_data, 6),
                          "images_per_s": round(images_per_step / dt, 2), "skipped": len(tally.skipped)})
                shown = " ".join(f"{k}={v:.3g}" for k, v in record_step.items() if k.endswith("total"))
                bar.update(bar_task, completed=step, losses=shown)

                stop, out_of_time = ddp.any_across(
                    d, (signals.received is not None, deadline is not None and time.monotonic() >= deadline), run.device)
                signalled = (signals.received or ("a signal on another process", signal.SIGTERM)) if stop else None
                stopped = _after_step(task, run, loader, log, run_info, tally, signalled, out_of_time)
                if stopped:
                    break
        except NonFiniteLoss as exc:
            where = (f"the last good checkpoint is {tally.checkpoint} (step {tally.checkpoint_step})"
                     if tally.checkpoint else "no checkpoint was written")
            message = (f"Training stopped at step {exc.step}: {exc} is not finite; "
                       f"nothing was saved from it and {where}.")
            log.event(message)
            raise CoordGANError(message) from None
    if tally.skipped:
        log.event(f"{len(tally.skipped)} unreadable image file(s) were skipped", show=True)
    step_time = float(np.median(step_times)) if step_times else None
    summary = {"start": start, "steps": tally.step, "stopped": stopped, "main": d.is_main,
               "checkpoint": tally.checkpoint, "skipped": len(tally.skipped), "step_time": step_time,
               "images_per_s": images_per_step / step_time if step_time else None}
    if step_time:
        log.event(f"{tally.step - start} steps at a median {step_time:.3f} s: "
                  f"{summary['images_per_s']:.1f} images/s over {d.world} process(es), batch {images_per_step}")
    return summary


def options_record(opts: RunOptions) -> dict:
    record = asdict(opts)
    record["out"] = str(opts.out)
    return record
