"""The one way this project prints to a terminal: Rich consoles that print text as written.

Markup is off, so a name like `clip[v2]` stays whole and a `[/x]` in a path or a reason cannot crash
a command; the coloured parts are Text objects (`tagged`).
"""

from __future__ import annotations


def console(stderr: bool = False, **kwargs):
    from rich.console import Console

    return Console(stderr=stderr, markup=False, **kwargs)


def tagged(tag: str, rest: str, style: str = "yellow"):
    """`tag` in colour, then `rest` as written: one line of a note, a warning, a failure."""
    from rich.text import Text

    return Text.assemble((tag, style), rest)
