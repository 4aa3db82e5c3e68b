"""Helpers shared by tests that drive the `coordgan` CLI in-process."""

import sys

import pytest


def run_main(monkeypatch, capsys, *args):
    """Run the propagate/eval-video commands with the CLI's error handling; (exit code, stdout, stderr)."""
    from coordgan.propagate_cli import main

    monkeypatch.setattr(sys, "argv", ["coordgan", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err
