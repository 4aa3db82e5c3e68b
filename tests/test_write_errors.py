"""A write that fails is one sentence naming the file once, from every writer that wrapped atomic_write.

atomic_write's WriteError is already "Cannot write X (reason)."; the writers below caught OSError (which it
also is) and said "Cannot write X: Cannot write X (No space left on device).." The full disk is real: a
tiny tmpfs in a private mount namespace (`unshare`), skipped where the kernel or container refuses one.
"""

import json

from tmpfs_helpers import run_on_tiny_tmpfs

WRITERS = """
import json, sys
from pathlib import Path
disk = Path(sys.argv[1])
import os
fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)  # fill the disk
try:
    while True:
        os.write(fd, bytes(4096))
except OSError:
    os.close(fd)

def attempt(name, write):
    try:
        write()
    except Exception as exc:
        return [name, type(exc).__name__, str(exc)]
    return [name, None, "written"]

from runtime.bench import report
from matplotlib.figure import Figure
from export.lookup_onnx import write_lookup_model
from export.tensorrt_build import _save_timing_cache
import torch
from coordgan import checkpoint
from coordgan.config import get_preset

class TimingCache:
    def serialize(self):
        return bytes(8192)

figure = Figure(figsize=(2, 2))
figure.subplots().plot([1, 2], [3, 4])
results = [
    attempt("bench.json", lambda: report.write_text(disk / "bench.json", "{}" * 4096)),
    attempt("bench.png", lambda: report._save(figure, disk / "bench.png")),
    attempt("lookup.onnx", lambda: write_lookup_model(disk / "lookup.onnx", 3)),
    attempt("timing.cache", lambda: _save_timing_cache(TimingCache(), disk / "timing.cache")),
    attempt("model.safetensors", lambda: checkpoint.save(disk / "model.safetensors", get_preset("tiny"),
                                                         {"g": torch.nn.Linear(64, 64)})),
]
(disk / "filler").unlink()
print(json.dumps({"results": results, "left": sorted(p.name for p in disk.iterdir())}))
"""


def test_a_full_disk_is_one_sentence_from_every_writer(tmp_path):
    disk = tmp_path / "disk"
    report = json.loads(run_on_tiny_tmpfs(disk, WRITERS, "64k").stdout.strip().splitlines()[-1])
    for name, kind, sentence in report["results"]:
        assert (kind, sentence) == ("WriteError", f"Cannot write {disk / name} (No space left on device).")
    assert report["left"] == []  # neither a target nor a temp file
