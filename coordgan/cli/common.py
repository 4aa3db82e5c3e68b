"""What the command modules share: progress displays and option parsing (consoles: runtime.terminal).

Only typer and rich load here; each command imports its own work inside its function.
"""

from __future__ import annotations

import contextlib

from runtime.errors import CoordGANError


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
    """A spinner line for a long command's steps: yields say(message), which shows the current one."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

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
