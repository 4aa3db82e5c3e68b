"""Files written whole or not at all, content hashes, and the cache folder: shared by every layer."""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
import stat
import tempfile
import threading
from pathlib import Path

from runtime.errors import CoordGANError, first_line


class WriteError(CoordGANError, OSError):
    """A file that cannot be written, in one sentence naming the user's path (never a temp name).
    Still an OSError, so callers that treat a write as optional (a cache on a read-only disk) catch it."""


def write_error(path, exc: BaseException) -> WriteError:
    """E.g. "Cannot write out/m.png (No space left on device)." """
    return WriteError(f"Cannot write {path} ({first_line(exc)}).")


def check_target(path, *, make_folder: bool = False) -> None:
    """Refuse, in one sentence, a path that cannot take a new file: a folder, something that is not a
    regular file (renaming over /dev/full would replace the device with our file), a missing folder
    (made with `make_folder`) or one whose path runs through a file."""
    path = Path(path)
    if path.is_dir():  # else the rename fails naming the temp file
        raise WriteError(f"{path} is a folder; give a file name to write.")
    if path.exists() and not path.is_file():
        raise WriteError(f"{path} exists and is not a regular file (a device, pipe or socket); give the name "
                         "of a file to write.")
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise WriteError(f"Cannot write {path}: {existing} is a file, not a folder.")
    if existing != path.parent:
        if not make_folder:
            raise WriteError(f"Cannot write {path}: the folder {path.parent} does not exist.")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(path, exc) from None


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb"):
    """Write to a temp file beside `path`, then rename: readers never see a half-written file.

    An OS error about this file (a full disk, no permission, a missing folder, a folder in its place) is a
    WriteError naming `path`; one about another file (the caller's, with its own name) passes as it is.
    The folder must exist. One stat before writing (a device or pipe would be replaced by the rename, which
    succeeds); everything else is asked only after a failure, to say why: on a shared filesystem with a
    file per frame, every metadata call counts."""
    path = Path(path)
    _refuse_special(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # e.g. a missing folder or no permission: the error names the temp file
        raise _explained(path, exc) from None
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        ours = isinstance(exc, OSError) and not isinstance(exc, CoordGANError) and exc.filename in (None, tmp)
        if ours:
            raise _explained(path, exc) from None
        raise


def _refuse_special(path: Path) -> None:
    try:
        st = os.stat(path)
    except OSError:  # absent (the usual case), or its folder is: mkstemp fails and that is explained then
        return
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        check_target(path)  # the sentence


def _explained(path: Path, exc: OSError) -> WriteError:
    """The sentence for a failed write, found by looking at the target now: a folder in its place, a missing
    folder, a path through a file; else the OS's reason."""
    try:
        check_target(path)
    except WriteError as refusal:
        return refusal
    return write_error(path, exc)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_HASHES: collections.OrderedDict = collections.OrderedDict()  # file identity -> hex digest, newest last
_HASHES_KEPT = 64
_HASHES_LOCK = threading.Lock()


def _identity(st: os.stat_result) -> tuple:
    """The file (device, inode: the same file by any path or link) and its version (size, mtime, ctime: an
    in-place rewrite changes ctime even where mtime is set back; an atomic rewrite is a new inode)."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def sha256_file(path, chunk: int = 1 << 20) -> str:
    """The file's SHA-256, remembered per file version (a small LRU): opening one model hashes it once,
    not once per layer that keys something by it (auto's choice, OpenVINO's cache, the run's identity)."""
    with _HASHES_LOCK:
        known = _HASHES.get(_identity(os.stat(path)))  # one stat: a known version is not opened nor read
    if known is not None:
        return known
    with open(path, "rb") as f:
        before = _identity(os.fstat(f.fileno()))  # what is read (the path may have been replaced since)
        digest = hashlib.sha256()
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
        after = _identity(os.fstat(f.fileno()))
    hexdigest = digest.hexdigest()
    if after == before:  # not written to while read: this digest is that version's
        with _HASHES_LOCK:
            _HASHES[before] = hexdigest
            while len(_HASHES) > _HASHES_KEPT:
                _HASHES.popitem(last=False)
    return hexdigest


def cache_dir(*parts: str) -> Path:
    """$COORDGAN_CACHE (default $XDG_CACHE_HOME/coordgan, else ~/.cache/coordgan), joined with parts."""
    root = os.environ.get("COORDGAN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "coordgan")
    return Path(root, *parts)
