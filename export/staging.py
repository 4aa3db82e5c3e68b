"""Publish a directory atomically: build it in a temp dir beside the target, then rename.

A reader (Triton polling its repository, a deploy script) sees either the old directory, or the
complete new one, never a half-written export; a failed or interrupted export leaves nothing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from runtime.errors import CoordGANError


def check_target(target: Path, overwrite: bool) -> None:
    if target.exists() and not target.is_dir():
        raise CoordGANError(f"{target} exists and is not a directory.")
    if target.exists() and not overwrite:
        raise CoordGANError(f"{target} already exists; pass --overwrite to replace it.")


@contextlib.contextmanager
def staged_directory(target, overwrite: bool = False):
    """Yield an empty temp directory; on clean exit it becomes `target` (replacing it if allowed)."""
    target = Path(target).absolute()
    check_target(target, overwrite)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as exc:
        raise CoordGANError(f"Cannot write to {target.parent}: {exc.strerror or exc}.") from None
    try:
        yield staging
        check_target(target, overwrite)  # it may have appeared meanwhile
        _publish(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _publish(staging: Path, target: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it 0700; give it the usual permissions
    if not target.exists():
        os.replace(staging, target)
        return
    # A non-empty directory cannot be replaced in one rename: move the old one aside first.
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    os.replace(target, old / target.name)
    try:
        os.replace(staging, target)
    except OSError:
        os.replace(old / target.name, target)  # put the old one back
        raise
    shutil.rmtree(old, ignore_errors=True)
