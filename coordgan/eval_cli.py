"""`coordgan eval-propagation`: the paper's label-propagation benchmark (see coordgan/evaluate.py).

Lazy imports: registering the command must not import torch (`coordgan --help` runs without it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from runtime.errors import CoordGANError

_HELP = {
    "data": "DIR with images/*.png|jpg and labels/<same stem>.png (palette or grayscale class ids), "
            "or 'synthetic-faces' for procedural faces with part labels.",
    "refs": "Comma-separated reference image names (default: the first --num-refs by sorted name).",
    "num_refs": "Number of reference images when --refs is not given (the paper uses 5).",
    "tau": "Softmax temperature of the soft lookup on the L2 coordinate distance (paper: 0.01).",
    "exclude": "Comma-separated class ids left out of the mean IoU (default 0, background, as the published "
               "evaluation; empty string: none).",
    "ignore": "Ground-truth class id whose pixels are not scored (published: 0, background; -1: score every pixel).",
    "max_queries": "Use at most this many query images (the first by sorted name).",
    "batch": "Images per encoder / lookup batch.",
    "n": "Number of synthetic faces (with --data synthetic-faces).",
    "seed": "Seed of the synthetic faces.",
    "json": "Write the full result (per class, per reference) as JSON to this file.",
    "vis": "Write a PNG: queries and ground truth on top, then each reference with its labels propagated.",
    "device": "cpu or cuda (default: cuda when available).",
}


def _ids(text: str, what: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise CoordGANError(f"{what} must be comma-separated class ids, got {text!r}.") from None


def register(app: typer.Typer) -> None:
    """Add `eval-propagation` to the main `coordgan` app."""

    @app.command("eval-propagation")
    def eval_propagation(
        ckpt: Path = typer.Argument(..., help="Checkpoint with an encoder (ours or the authors' .pt)."),
        data: str = typer.Option(..., "--data", help=_HELP["data"]),
        refs: Optional[str] = typer.Option(None, "--refs", help=_HELP["refs"]),
        num_refs: int = typer.Option(5, "--num-refs", help=_HELP["num_refs"]),
        tau: float = typer.Option(0.01, "--tau", help=_HELP["tau"]),
        exclude: str = typer.Option("0", "--exclude", help=_HELP["exclude"]),
        ignore: int = typer.Option(0, "--ignore", help=_HELP["ignore"]),
        max_queries: Optional[int] = typer.Option(None, "--max-queries", help=_HELP["max_queries"]),
        batch: int = typer.Option(8, "--batch", help=_HELP["batch"]),
        n: int = typer.Option(50, "--n", help=_HELP["n"]),
        seed: int = typer.Option(0, "--seed", help=_HELP["seed"]),
        json_out: Optional[Path] = typer.Option(None, "--json", help=_HELP["json"]),
        vis: Optional[Path] = typer.Option(None, "--vis", help=_HELP["vis"]),
        device: Optional[str] = typer.Option(None, "--device", help=_HELP["device"]),
        lookup: str = typer.Option("auto", "--lookup", help="Lookup path: reference (torch, exact), sparse (numpy, "
                                   "neglected mass <= 1e-4, much faster on CPU), or auto (sparse on CPU)."),
    ):
        """Label propagation IoU through encoder correspondence maps, beside the identity baseline."""
        run(ckpt, data=data, refs=refs, num_refs=num_refs, tau=tau, exclude=exclude, ignore=ignore,
            max_queries=max_queries, batch=batch, n=n, seed=seed, json_out=json_out, vis=vis, device=device,
            lookup=lookup)


def run(ckpt, *, data, refs=None, num_refs=5, tau=0.01, exclude="0", ignore=0, max_queries=None, batch=8,
        n=50, seed=0, json_out=None, vis=None, device=None, lookup="auto"):
    import json
    import math

    import torch
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from coordgan import evaluate as ev
    from coordgan.checkpoint import load
    from coordgan.devices import torch_device
    from runtime.fileio import atomic_write

    console = Console(stderr=True)
    exclude_ids = _ids(exclude, "--exclude")
    ignore_index = None if ignore < 0 else ignore
    if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau > 0):
        raise CoordGANError(f"--tau must be a finite number > 0, got {tau}.")
    device = torch_device(device)
    if lookup == "auto":
        lookup = "reference" if str(device).startswith("cuda") else "sparse"
    for out in (json_out, vis):
        if out is not None and not Path(out).parent.is_dir():
            raise CoordGANError(f"The folder of {out} does not exist.")

    ck = load(ckpt)
    corr_fn = ev.checkpoint_corr_fn(ck, device)  # one sentence when the checkpoint has no encoder
    size = ck.config.base_size
    if data == ev.SYNTHETIC:
        if n < 2:
            raise CoordGANError(f"--n must be at least 2 (references and queries), got {n}.")
        dataset = ev.synthetic_faces(n, size, seed)
    else:
        dataset = ev.load_folder(data, size)
    ref_names = [r.strip() for r in refs.split(",") if r.strip()] if refs else None
    ref_set, queries = ev.split_refs(dataset, ref_names, num_refs, max_queries)

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        tasks = {}

        def progress(stage, done, total):
            if stage not in tasks:
                label = {"maps": "correspondence maps", "propagation": "propagation (ref x query)"}.get(stage, stage)
                tasks[stage] = bar.add_task(label, total=total)
            bar.update(tasks[stage], completed=done)

        options = dict(tau=tau, exclude=exclude_ids, ignore_index=ignore_index, batch=batch, device=device,
                       lookup=lookup)
        maps = ev.correspondence_maps(corr_fn, ref_set, queries, batch=batch, device=device, progress=progress)
        result = ev.evaluate_maps(*maps, ref_set, queries, progress=progress, **options)
        # synthetic data: the renderer's own maps, the ceiling beside the identity baseline, and
        # how far the matches land from the true ones
        ceiling = ev.ground_truth(ref_set, queries, progress=lambda _, done, total: progress(
            "ground-truth propagation", done, total), **options)
        grid = ev.identity_corr(torch.zeros(1, 3, size, size))
        errors = ev.match_error({"model": maps, "identity": (grid.expand(len(ref_set), -1, -1, -1),
                                                             grid.expand(len(queries), -1, -1, -1))},
                                ref_set, queries, ignore_index=ignore_index)

    record = result.to_json()
    if ceiling is not None:
        gt = ceiling.to_json()
        record.update({"ground_truth_miou": gt["miou"], "ground_truth_class_iou": gt["class_iou"],
                       "match_error_px": errors["model"], "identity_match_error_px": errors["identity"]})
    record.update({"checkpoint": str(ck.path), "sha256": ck.sha256, "preset": ck.config.name,
                   "data": str(data), "size": size})
    if data == ev.SYNTHETIC:
        record.update({"n": n, "seed": seed})
    if json_out is not None:
        with atomic_write(json_out, "w") as f:
            json.dump(record, f, indent=2)
    if vis is not None:
        from PIL import Image

        grid = ev.visualize(result, ref_set, queries)
        with atomic_write(vis) as f:
            Image.fromarray(grid).save(f, format="PNG")

    def pct(v):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"

    table = Table(title=f"label propagation, {len(ref_set)} refs x {len(queries)} queries")
    table.add_column("class")
    table.add_column("IoU %", justify="right")
    table.add_column("identity %", justify="right")
    gt_iou = [None] * len(result.class_iou)
    if ceiling is not None:
        table.add_column("ground truth %", justify="right")
        gt_iou = ceiling.class_iou
    for name, v, b, g in zip(result.class_names, result.class_iou, result.identity_class_iou, gt_iou):
        if v is None and b is None:
            continue
        table.add_row(name, pct(v), pct(b), *([pct(g)] if ceiling is not None else []))
    table.add_row("[bold]mean[/bold]", f"[bold]{pct(result.miou)}[/bold]", pct(result.identity_miou),
                  *([pct(ceiling.miou)] if ceiling is not None else []))
    Console().print(table)
    beside = f"identity baseline {pct(result.identity_miou)} %"
    if ceiling is not None:
        beside += f"; ground-truth correspondence {pct(ceiling.miou)} %"
    print(f"mIoU {pct(result.miou)} % ({beside}) over "
          f"{len(ref_set)} reference(s), {len(queries)} queries; excluded classes {exclude_ids or 'none'}")
    if errors is not None:
        print(f"matches land {errors['model']:.2f} px from the ground truth's on average "
              f"(identity baseline {errors['identity']:.2f} px)")
    if json_out is not None:
        print(f"wrote {json_out}")
    if vis is not None:
        print(f"wrote {vis}")
    return result
