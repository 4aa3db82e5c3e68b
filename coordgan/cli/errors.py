"""How every `coordgan` command ends: one sentence for a user error, one for Ctrl-C, SIGTERM or SIGHUP.

Never imports the app (so anything may import this without building it): `run_app` takes any
Typer app and runs it with the project's error contract.
"""

from __future__ import annotations

import signal
import sys
import threading

import typer

from runtime.errors import STOP_SIGNALS, CoordGANError

_terminated: list[int] = []  # the stop signal received


def _on_stop_signal(signum, frame):
    # Unwind like Ctrl-C (temp files removed, no half-written output left); Python's default would
    # end the process on the spot. A second signal must not cut that cleanup short. Training
    # installs its own handlers while it runs; `serve` stops its server as this unwinds it.
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    _terminated.append(signum)
    raise KeyboardInterrupt


def run_app(typer_app: typer.Typer) -> None:
    """Run a Typer app with the project's error contract: one sentence and exit 1, no traceback.

    Ctrl-C, SIGTERM and SIGHUP end a command with one sentence too (exit 130, 143 and 129); Typer
    turns the KeyboardInterrupt into a silent exit 130, so the message is printed here.
    """
    main_thread = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, _on_stop_signal) for sig in STOP_SIGNALS} if main_thread else {}
    try:
        _run(typer_app)
    except KeyboardInterrupt:  # a stop that landed while the command was already ending (in a handler below)
        _stopped()
    finally:
        for sig, handler in previous.items():  # callers in-process (tests) get theirs back
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        _terminated.clear()


def _run(typer_app: typer.Typer) -> None:
    try:
        typer_app()
    except CoordGANError as exc:
        _fail(str(exc))
    except FileExistsError as exc:  # mkdir(exist_ok=True) where a file has the folder's name
        _fail(f"cannot make the folder {exc.filename}: a file of that name exists.")
    except NotADirectoryError as exc:
        _fail(f"cannot use the path {exc.filename}: part of it is a file, not a folder.")
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        _fail(f"cannot access{where}: {exc.strerror or exc}.")
    except KeyboardInterrupt:
        _stopped()
    except SystemExit as exc:
        # Typer's silent exit for Ctrl-C, not a command's own exit 130 (training says why it stopped)
        if exc.code == 130 and isinstance(getattr(exc.__context__, "__cause__", None), KeyboardInterrupt):
            _stopped()
        raise


def _fail(sentence: str):
    print(f"Error: {sentence}", file=sys.stderr)
    sys.exit(1)


def _stopped():
    if _terminated:
        print(f"Stopped by {signal.Signals(_terminated[0]).name}.", file=sys.stderr)
        sys.exit(128 + _terminated[0])
    print("Interrupted.", file=sys.stderr)
    sys.exit(130)
