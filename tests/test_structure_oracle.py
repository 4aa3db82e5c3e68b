"""checkpoints/structure_oracle.py (the tiny checkpoint's diagnostic) runs and reports both fits."""

import re
import subprocess
import sys
from pathlib import Path

import torch

from coordgan.checkpoint import save
from coordgan.config import PRESETS
from coordgan.models import build

SCRIPT = Path(__file__).resolve().parents[1] / "checkpoints" / "structure_oracle.py"


def test_structure_oracle_scores_fitted_maps(tmp_path):
    torch.manual_seed(0)
    ckpt = save(tmp_path / "tiny.safetensors", PRESETS["tiny"], build(PRESETS["tiny"], which=("g", "e")))
    result = subprocess.run([sys.executable, str(SCRIPT), str(ckpt), "--steps", "3", "--faces", "8"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = {}
    for line in result.stdout.splitlines():
        what, miou, identity, off = re.fullmatch(r"(.+): mIoU ([\d.]+) % \(identity baseline ([\d.]+) %\), "
                                                 r"matches land ([\d.]+) px off", line).groups()
        rows[what] = (float(miou), float(identity), float(off))
    assert list(rows) == ["upright fit", "mirrored fit"] + [f"encoder, codes shrunk to {x}" for x in ("1", "0.5", "0.25", "0")]
    identity = rows["upright fit"][1]
    assert all(0 <= m <= 100 and i == identity and o >= 0 for m, i, o in rows.values())
    missing = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "none.safetensors")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and missing.stderr.startswith("Error:") and "Traceback" not in missing.stderr
