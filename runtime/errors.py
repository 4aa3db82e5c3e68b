"""The one exception type for errors a user can cause.

Torch-free on purpose: `runtime/` and the CLI import it on machines without PyTorch.
The CLI prints the message (one sentence) and exits non-zero, with no traceback.
"""


class CoordGANError(Exception):
    """A user-facing error: bad path, corrupt file, wrong shape, missing package or GPU."""
