"""`coordgan eval-propagation` (the paper's label-propagation benchmark) and `coordgan eval-video`
(DAVIS J and F of propagated masks)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from runtime.terminal import console, tagged

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
    "seed": "Seed of the synthetic faces (and of --preset's random weights).",
    "preset": "Random weights of this preset instead of CKPT: a quick try of the whole evaluation (the scores "
              "then say nothing about a model).",
    "json": "Write the full result (per class, per reference) as JSON to this file.",
    "vis": "Write a PNG: queries and ground truth on top, then each reference with its labels propagated.",
    "device": "cpu or cuda (default: cuda when available).",
    "lookup": "Lookup path: reference (torch, exact), sparse (numpy, neglected mass <= 1e-4, much faster on CPU), "
              "dense (numpy, exact), cuda (the fused kernel), cuda-sparse (the sparse GPU kernel, neglected mass "
              "<= 1e-4), or auto (reference on a GPU, sparse on the CPU).",
}


def eval_propagation(
    ckpt: Optional[Path] = typer.Argument(None, help="Checkpoint with an encoder (ours or the authors' .pt); omit "
                                          "it and pass --preset for random weights."),
    data: str = typer.Option(..., "--data", help=_HELP["data"]),
    preset: Optional[str] = typer.Option(None, "--preset", help=_HELP["preset"]),
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
    lookup: str = typer.Option("auto", "--lookup", help=_HELP["lookup"]),
):
    """Label propagation IoU through encoder correspondence maps, beside the identity baseline."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from coordgan.evaluation.run import EvalOptions, parse_ids, run_eval

    options = EvalOptions(
        data=data, refs=tuple(r.strip() for r in refs.split(",") if r.strip()) if refs else (), num_refs=num_refs,
        tau=tau, exclude=parse_ids(exclude, "--exclude"), ignore=ignore, max_queries=max_queries, batch=batch, n=n,
        seed=seed, json_out=json_out, vis=vis, device=device, lookup=lookup, preset=preset)
    labels = {"maps": "correspondence maps", "propagation": "propagation (ref x query)"}
    columns = (TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    bar = Progress(*columns, console=console(stderr=True), transient=False)
    tasks = {}

    def progress(stage, done, total):
        if not tasks:  # shown from the first maps on: a refused run leaves no empty bar behind
            bar.start()
        if stage not in tasks:
            tasks[stage] = bar.add_task(labels.get(stage, stage), total=total)
        bar.update(tasks[stage], completed=done)

    try:
        report = run_eval(ckpt, options, progress)
    finally:
        if tasks:
            bar.stop()
    _print_propagation(report, options)


def _pct(v) -> str:
    return "-" if v is None or (isinstance(v, float) and v != v) else f"{100 * v:.2f}"


def _print_propagation(report, options) -> None:
    from rich.table import Table
    from rich.text import Text

    result, ceiling, errors = report.result, report.ceiling, report.errors
    table = Table(title=f"label propagation, {report.refs} refs x {report.queries} queries")
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
        table.add_row(name, _pct(v), _pct(b), *([_pct(g)] if ceiling is not None else []))
    table.add_row(Text("mean", style="bold"), Text(_pct(result.miou), style="bold"), _pct(result.identity_miou),
                  *([_pct(ceiling.miou)] if ceiling is not None else []))
    console().print(table)
    beside = f"identity baseline {_pct(result.identity_miou)} %"
    if ceiling is not None:
        beside += f"; ground-truth correspondence {_pct(ceiling.miou)} %"
    print(f"mIoU {_pct(result.miou)} % ({beside}) over {report.refs} reference(s), {report.queries} queries; "
          f"excluded classes {list(options.exclude) or 'none'}")
    if options.preset is not None:
        print(f"weights: preset {options.preset}, random (seed {options.seed}); the scores say nothing about a model")
    if errors is not None:
        print(f"matches land {errors['model']:.2f} px from the ground truth's on average "
              f"(identity baseline {errors['identity']:.2f} px)")
    for path in (options.json_out, options.vis):
        if path is not None:
            print(f"wrote {path}")


def eval_video(
    pred: Path = typer.Argument(..., help="Predicted masks: a folder of PNGs, or one folder per sequence."),
    gt: Path = typer.Argument(..., help="Ground truth: a DAVIS root, a folder of sequence folders, or one "
                                        "sequence folder of PNGs."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON (with per-frame scores) instead of a table."),
    all_frames: bool = typer.Option(False, "--all-frames", help="Also score the first and last frames (DAVIS "
                                                                 "leaves them out)."),
    resolution: Optional[str] = typer.Option(None, "--resolution", help="DAVIS resolution folder (default: 480p, "
                                                                          "or the only one)."),
):
    """DAVIS region similarity J and boundary F-measure per sequence and object, with means."""
    from runtime.davis.evaluate import evaluate

    result = evaluate(pred, gt, all_frames=all_frames, resolution=resolution)
    if json_out:
        print(json.dumps(_no_nan(result), indent=2))
        return
    _print_video(result)


def _no_nan(value):
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nan(v) for v in value]
    return value


def _fmt(v) -> str:
    return "-" if v != v else f"{v:.3f}"


def _print_video(result: dict) -> None:
    from rich.table import Table

    table = Table(title="DAVIS J (region) and F (boundary)", caption=result["convention"])
    for col in ("sequence", "object", "J mean", "J recall", "J decay", "F mean", "F recall", "F decay"):
        table.add_column(col, justify="left" if col in ("sequence", "object") else "right")
    for seq, r in result["sequences"].items():
        for obj, o in r["objects"].items():
            table.add_row(seq, obj, *(_fmt(o[m][s]) for m in ("J", "F") for s in ("mean", "recall", "decay")))
    g = result["global"]
    table.add_section()
    table.add_row("all", "mean", *(_fmt(g[f"{m}-{s}"]) for m in ("J", "F") for s in ("Mean", "Recall", "Decay")))
    out = console()
    out.print(table)
    out.print(f"J&F-Mean {_fmt(g['J&F-Mean'])}  J-Mean {_fmt(g['J-Mean'])}  F-Mean {_fmt(g['F-Mean'])}")
    for seq, reason in result["skipped"].items():
        out.print(tagged("not scored", f" {seq}: {reason}"))


def register(app: typer.Typer) -> None:
    app.command("eval-propagation")(eval_propagation)
    app.command("eval-video")(eval_video)
