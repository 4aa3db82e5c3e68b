"""runtime.fileio.atomic_write and the VideoWriter: refusals name the user's path and never a temp file.

The full disk is real: a 256 KiB tmpfs mounted in a private mount namespace (`unshare`), skipped
where the kernel or the container does not allow one.
"""

import json
import os

import pytest

from runtime.errors import CoordGANError
from runtime.fileio import WriteError, atomic_write
from tmpfs_helpers import run_on_tiny_tmpfs


def write(path, data=b"x"):
    with atomic_write(path) as f:
        f.write(data)


def test_a_target_that_is_not_a_regular_file_is_refused_and_left_alone(tmp_path):
    """`sample -o /dev/full` replaced the device node with a PNG (the rename goes over anything)."""
    link = tmp_path / "full.png"
    link.symlink_to("/dev/full")  # the device through a link: the test cannot harm the real node
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    for target in (link, fifo):
        with pytest.raises(CoordGANError, match=rf"^{target} exists and is not a regular file \(a device, pipe"):
            write(target)
    assert link.is_symlink() and fifo.is_fifo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full.png", "pipe.png"]  # no temp file left


def test_a_missing_folder_and_a_path_through_a_file_are_told_apart(tmp_path):
    (tmp_path / "notes.txt").write_text("a file")
    with pytest.raises(CoordGANError, match=r"^Cannot write .*notes.txt/out/x.png: .*notes.txt is a file, not a "
                                            r"folder\.$"):
        write(tmp_path / "notes.txt" / "out" / "x.png")
    with pytest.raises(CoordGANError, match=r"^Cannot write .*missing/x.png: the folder .*missing does not exist\.$"):
        write(tmp_path / "missing" / "x.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_the_callers_own_errors_pass_unchanged(tmp_path):
    """Only errors about the file being written are reworded; the caller's name their own file."""
    with pytest.raises(FileNotFoundError) as caught:
        with atomic_write(tmp_path / "x.bin") as f:
            f.write(open(tmp_path / "source.bin", "rb").read())
    assert not isinstance(caught.value, CoordGANError) and caught.value.filename == str(tmp_path / "source.bin")
    assert list(tmp_path.iterdir()) == []


FILL_THE_DISK = """
import json, sys
from pathlib import Path
import numpy as np
from runtime.errors import CoordGANError
from runtime.fileio import WriteError, atomic_write
from runtime.io.video import VideoWriter
disk = Path(sys.argv[1])
report = {}
try:
    with atomic_write(disk / "big.bin") as f:
        f.write(bytes(1 << 20))
except CoordGANError as exc:
    report["file"] = [type(exc).__name__, isinstance(exc, OSError), str(exc)]
try:
    with VideoWriter(disk / "overlay.mp4") as video:
        for frame in np.random.default_rng(0).integers(0, 256, (40, 240, 320, 3), dtype=np.uint8):
            video.write(frame)
except CoordGANError as exc:
    report["video"] = [type(exc).__name__, isinstance(exc, OSError), str(exc)]
report["left"] = sorted(p.name for p in disk.iterdir())
print(json.dumps(report))
"""


def test_a_full_disk_names_the_file_and_leaves_nothing(tmp_path):
    """A full disk read "cannot access: No space left on device.": no path, the CLI's OSError fallback."""
    disk = tmp_path / "disk"
    report = json.loads(run_on_tiny_tmpfs(disk, FILL_THE_DISK, "256k").stdout)
    assert report["file"] == ["WriteError", True, f"Cannot write {disk / 'big.bin'} (No space left on device)."]
    assert report["video"] == ["WriteError", True, f"Cannot write {disk / 'overlay.mp4'} (No space left on device)."]
    assert report["left"] == []  # neither the targets nor a temp file
    assert issubclass(WriteError, OSError)  # optional writes (a cache) that catch OSError still do


def test_sha256_file_reads_a_file_once_per_version(tmp_path, monkeypatch):
    """Opening one model hashed it up to three times (auto's choice, OpenVINO's cache, the run's identity)."""
    import hashlib

    from runtime import fileio

    reads = []
    real_open = open

    def counting_open(file, *args, **kwargs):
        reads.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(fileio, "open", counting_open, raising=False)
    model = tmp_path / "encoder.onnx"
    model.write_bytes(b"first version")
    first = fileio.sha256_file(model)
    assert first == hashlib.sha256(b"first version").hexdigest() and len(reads) == 1
    assert fileio.sha256_file(model) == first and fileio.sha256_file(str(model)) == first
    link = tmp_path / "link.onnx"
    link.symlink_to(model)
    assert fileio.sha256_file(link) == first
    assert len(reads) == 1  # the same version by any name: not read again
    # rewritten in place, same size, its mtime set back: still a new version
    stat = model.stat()
    model.write_bytes(b"other version")
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert fileio.sha256_file(model) == hashlib.sha256(b"other version").hexdigest() and len(reads) == 2
    # replaced atomically (a new export over the old one)
    write(model, b"third")
    assert fileio.sha256_file(model) == hashlib.sha256(b"third").hexdigest() and len(reads) == 3
    with pytest.raises(FileNotFoundError):
        fileio.sha256_file(tmp_path / "missing.onnx")


def test_a_successful_write_asks_one_stat_and_failures_are_still_explained(tmp_path, monkeypatch):
    """check_target ran for every mask and state file (about five stats each on the shared filesystem);
    now one stat before writing (a device would be replaced by the rename) and the rest after a failure."""
    from runtime import fileio

    real_stat, calls = os.stat, []
    real_check = fileio.check_target

    def counting_stat(path, *args, **kwargs):
        calls.append(str(path))
        return real_stat(path, *args, **kwargs)

    def no_check(path, **kwargs):
        raise AssertionError("check_target on a successful write")

    monkeypatch.setattr(os, "stat", counting_stat)
    monkeypatch.setattr(fileio, "check_target", no_check)
    write(tmp_path / "00001.png")
    write(tmp_path / "00001.png", b"again")  # over an existing file
    assert calls == [str(tmp_path / "00001.png")] * 2 and (tmp_path / "00001.png").read_bytes() == b"again"
    monkeypatch.setattr(fileio, "check_target", real_check)
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(WriteError, match=r"^.*folder.png is a folder; give a file name to write\.$"):
        write(tmp_path / "folder.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00001.png", "folder.png"]
