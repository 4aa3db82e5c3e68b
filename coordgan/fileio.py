"""Small torch-free file helpers shared by training, export and the runtime."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

from coordgan.errors import CoordGANError


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


def upright(img):
    """A Pillow image as a viewer shows it: its EXIF orientation (phone photos) applied. A broken EXIF
    block (Pillow raises various errors on some) leaves the stored orientation rather than failing."""
    from PIL import ImageOps

    try:
        return ImageOps.exif_transpose(img)
    except Exception:
        return img
