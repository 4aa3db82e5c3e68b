"""What the command modules share: help formatting, progress displays and option parsing (consoles:
runtime.terminal).

Only typer and rich load here; each command imports its own work inside its function.
"""

from __future__ import annotations

import contextlib
import functools

import typer.core

from runtime.errors import CoordGANError

_TYPE_WORDS = {"int": "INTEGER", "float": "FLOAT", "str": "TEXT", "path": "PATH", "file": "FILE", "dir": "DIRECTORY",
               "int range": "INTEGER RANGE", "float range": "FLOAT RANGE"}


@functools.cache  # once: a second patch would wrap the first
def conventional_help() -> None:
    """Help that reads as click's and most tools' does: `Usage: coordgan export onnx [OPTIONS] CKPT`,
    `--out PATH`, `--threads INTEGER`, flags (and --help) without a type.

    Typer 0.2x writes a required argument as {ckpt} in usage lines and tags every option with its
    Python type, flags included (`--overwrite <bool>`), and has no setting for it: its two renderers
    are replaced once, for every command (the CLI package calls this before building its app).
    Earlier Typers have no `display_type` and already print the conventional form."""
    core = typer.core
    typer_type = getattr(core.TyperArgument, "display_type", None)
    if typer_type is None:
        return

    def type_word(param, ctx) -> str:
        label = typer_type(param, ctx).strip("<>")  # "<int>", "<list[str]>" (repeatable), "<a|b>" (choices)
        if label.startswith("list[") and label.endswith("]"):
            label = label[5:-1]
        return _TYPE_WORDS.get(label, f"[{label}]" if "|" in label else label.upper())

    def usage_pieces(argument, ctx) -> list[str]:
        name = (argument.metavar or argument.name).upper() + ("..." if argument.nargs != 1 else "")
        return [name if argument.required else f"[{name}]"]

    core.TyperArgument.display_type = type_word
    core.TyperArgument.get_usage_pieces = usage_pieces
    core.TyperOption.display_type = lambda option, ctx: "" if option.is_flag else type_word(option, ctx)


def positive_ints(text: str, option: str) -> tuple[int, ...]:
    """'1,2,8' -> (1, 2, 8); anything else is one sentence naming the option."""
    try:
        values = tuple(int(t) for t in text.split(","))
        if not values or min(values) < 1:
            raise ValueError
    except ValueError:
        raise CoordGANError(f"{option} must be positive integers separated by commas, not {text!r}.") from None
    return values


@contextlib.contextmanager
def status(out):
    """A spinner line for a long command's steps: yields say(message), which shows the current one.
    Where `out` is no terminal (a log, a pipe, CI) a spinner shows nothing, so each step is a line."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    if not out.is_terminal:
        yield lambda message: out.print(f"{message} ...", highlight=False)
        return
    with Progress(SpinnerColumn(), TextColumn("{task.description}", markup=False), TimeElapsedColumn(), console=out,
                  transient=True) as progress:
        task = progress.add_task("starting", total=None)
        yield lambda message: progress.update(task, description=message)


@contextlib.contextmanager
def frames_bar(out, description: str):
    """A frames bar (count, frames/s, eta) shown from the first frame on, so a run refused before any
    frame leaves no empty bar behind: yields on_frame(done, total)."""
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

    class FramesPerSecond(ProgressColumn):
        def render(self, task):
            return Text(f"{task.speed:.1f} frames/s" if task.speed else "")

    progress = Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                        FramesPerSecond(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=out)
    tasks: list = []

    def on_frame(done, total):
        if not tasks:
            progress.start()
            tasks.append(progress.add_task(description, total=total))
        progress.update(tasks[0], completed=done, total=total)

    try:
        yield on_frame
    finally:
        if tasks:
            progress.stop()
