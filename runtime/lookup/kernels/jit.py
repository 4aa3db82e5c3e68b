"""numba's njit with an on-disk cache that works where the package folder is read-only, and that a
change to any file of this folder invalidates.

numba keys a cached function on its own file's timestamp only, so a cached kernel would outlive an
edit of a helper it inlines from a sibling file; the locators below stamp every kernel with all the
files of this folder instead. Where the package folder and the user cache are read-only,
``NUMBA_CACHE_DIR`` or a per-user temp folder is used.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numba
from numba.core import caching

_HERE = Path(__file__).resolve().parent


class _FolderStamp:
    """Mixin: a function of this folder is as fresh as the newest file of the folder."""

    @classmethod
    def from_function(cls, py_func, py_file):
        if Path(py_file).resolve().parent != _HERE:
            return None
        return super().from_function(py_func, py_file)

    def get_source_stamp(self):
        stats = [p.stat() for p in sorted(_HERE.glob("*.py"))]
        return max(s.st_mtime for s in stats), sum(s.st_size for s in stats)


_LOCATORS = [type(f"Kernels{base.__name__}", (_FolderStamp, base), {})
             for base in (caching.UserProvidedCacheLocator, caching.InTreeCacheLocator, caching.UserWideCacheLocator)]


def _install_locators() -> None:
    classes = caching.CacheImpl._locator_classes
    if not any(issubclass(c, _FolderStamp) for c in classes):
        classes[:0] = _LOCATORS


def _ensure_cache_dir() -> bool:
    """True when numba can cache next to this file, in the user cache or in NUMBA_CACHE_DIR; else
    point NUMBA_CACHE_DIR (numba.config.CACHE_DIR) at a per-user temp directory if that is writable."""
    probe = _ensure_cache_dir  # any function defined in this file
    for locator in _LOCATORS:
        if locator.from_function(probe, __file__) is not None:
            return True
    fallback = os.path.join(tempfile.gettempdir(), f"coordgan-numba-{os.getuid() if hasattr(os, 'getuid') else 0}")
    try:
        os.makedirs(fallback, exist_ok=True)
        tempfile.TemporaryFile(dir=fallback).close()
    except OSError:
        return False
    numba.config.CACHE_DIR = fallback
    return _LOCATORS[0].from_function(probe, __file__) is not None


_install_locators()
CACHE = _ensure_cache_dir()


def jit(*args, **kwargs):
    return numba.njit(*args, cache=CACHE, **kwargs)
