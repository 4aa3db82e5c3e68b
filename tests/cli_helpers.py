"""Helpers shared by tests that drive the `coordgan` CLI in-process."""

import sys

import pytest


def run_main(monkeypatch, capsys, *args, whole_cli: bool = False):
    """Run the propagate/eval-video commands (or, with whole_cli, any `coordgan` command) with the CLI's
    error handling; (exit code, stdout, stderr)."""
    if whole_cli:
        from coordgan.cli import main
    else:
        from coordgan.propagate_cli import main

    monkeypatch.setattr(sys, "argv", ["coordgan", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err
