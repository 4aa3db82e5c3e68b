"""Helpers shared by tests that drive the `coordgan` CLI, in-process or as a real process."""

import subprocess
import sys

import pytest


def run_main(monkeypatch, capsys, *args):
    """Run a `coordgan` command in-process with the CLI's error handling; (exit code, stdout, stderr)."""
    from coordgan.cli import main

    monkeypatch.setattr(sys, "argv", ["coordgan", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def run_cli(*args, block_torch=False):
    """`coordgan ARGS` in a fresh interpreter (with torch unimportable: a deployment box); CompletedProcess."""
    prelude = "import sys; sys.modules['torch'] = None; " if block_torch else "import sys; "
    code = prelude + "sys.argv = ['coordgan', *sys.argv[1:]]; from coordgan.cli import main; main()"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300)
