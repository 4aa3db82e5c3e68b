"""A Python script run on a tiny tmpfs of its own (a full disk, for the tests of write errors)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_on_tiny_tmpfs(disk: Path, script: str, size: str) -> subprocess.CompletedProcess:
    """Mount a tmpfs of `size` on `disk` in a user and mount namespace and run `script` with it as argv[1];
    skips where unshare or the mount is not allowed."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare here to mount a tiny tmpfs")
    disk.mkdir(exist_ok=True)
    run = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                          f'mount -t tmpfs -o size={size} tmpfs "$1" || exit 99; exec "$2" -c "$3" "$1"', "sh",
                          str(disk), sys.executable, script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    if run.returncode == 99 or run.stderr.startswith("unshare:"):
        pytest.skip(f"cannot mount a tmpfs here: {run.stderr.strip()}")
    assert run.returncode == 0, run.stderr
    return run
