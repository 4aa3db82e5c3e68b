"""`coordgan report`: an HTML page of a propagation run (runtime.report)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from runtime.terminal import console, tagged

_HELP = {
    "folder": "The output folder of `coordgan propagate` (one sequence or OUT/<seq>/ of a dataset) or of "
              "`coordgan demo`.",
    "davis": "Ground truth to score against: a DAVIS root (Annotations/<res>/<seq>/), a folder of sequence "
             "folders of masks, or one folder of masks for a one-sequence run; adds J and F per object, worst "
             "sequences first.",
    "out": "The page (default: OUT/report.html); its images go in <name>_files/ beside it.",
    "model": "The export the run used (a folder with manifest.json, or its encoder.onnx): the header shows its "
             "preset, checkpoint and opset.",
    "frames": "Frames in each sequence's strip (first, evenly spaced, last).",
}


def report(
    folder: Path = typer.Argument(..., metavar="OUT", help=_HELP["folder"]),
    davis: Optional[Path] = typer.Option(None, "--davis", help=_HELP["davis"]),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help=_HELP["out"]),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help=_HELP["model"]),
    frames: int = typer.Option(5, "--frames", min=1, help=_HELP["frames"]),
):
    """One HTML page of a propagation run: frames with their masks, numbers, warnings, J and F."""
    write_and_say(folder, out, davis=davis, model=model, columns=frames)


def write_and_say(folder: Path, out: Optional[Path] = None, **options) -> None:
    """runtime.report.write_report, then one line saying where (and which sequences are unfinished);
    `propagate --report` ends with it too."""
    from runtime.report import write_report
    from runtime.report.page import counted

    page, run = write_report(folder, out, **options)
    err = console(stderr=True)
    if run.incomplete:
        err.print(tagged("warning", f" incomplete sequences, drawn as far as they got: {', '.join(run.incomplete)}"),
                  soft_wrap=True)
    console().print(f"wrote {page} ({counted(len(run.sequences), 'sequence')})", soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("report")(report)
