"""Files written whole or not at all, content hashes, and the cache folder: shared by every layer."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

from runtime.errors import CoordGANError


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb"):
    """Write to a temp file beside `path`, then rename: readers never see a half-written file."""
    path = Path(path)
    if path.is_dir():  # else the rename fails naming the temp file
        raise CoordGANError(f"{path} is a folder; give a file name to write.")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sha256_file(path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_dir(*parts: str) -> Path:
    """$COORDGAN_CACHE (default $XDG_CACHE_HOME/coordgan, else ~/.cache/coordgan), joined with parts."""
    root = os.environ.get("COORDGAN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "coordgan")
    return Path(root, *parts)
