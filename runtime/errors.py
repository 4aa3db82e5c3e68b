"""The one exception type for errors a user can cause, and the signals that stop a command.

Torch-free on purpose: `runtime/` and the CLI import it on machines without PyTorch.
The CLI prints the message (one sentence) and exits non-zero, with no traceback.
"""

import signal

# Besides Ctrl-C (SIGINT), what stops a command cleanly: SIGTERM (docker stop, Slurm, kill) and SIGHUP
# (the terminal closed; a `serve` left running would keep its server and ports).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class CoordGANError(Exception):
    """A user-facing error: bad path, corrupt file, wrong shape, missing package or GPU."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's message as a clause to quote inside one sentence: its first line (its type's name
    when it has none), at most `limit` characters, without a final period. An OS or FFmpeg error
    gives its reason alone, without the errno and the path the sentence names anyway."""
    text = exc.strerror if isinstance(getattr(exc, "strerror", None), str) else str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit].rstrip(".")
