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
    ckpt = save(tmp_path / "tiny.safetensors", PRESETS["tiny"], build(PRESETS["tiny"], which=("g",)))
    result = subprocess.run([sys.executable, str(SCRIPT), str(ckpt), "--steps", "3", "--faces", "8"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["upright", "mirrored"]
    for line in lines:
        miou, identity, off = (float(x) for x in re.findall(r"mIoU ([\d.]+) % \(identity baseline ([\d.]+) %\), "
                                                           r"matches land ([\d.]+) px off", line)[0])
        assert 0 <= miou <= 100 and 0 < identity <= 100 and off >= 0, line
    missing = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "none.safetensors")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and missing.stderr.startswith("Error:") and "Traceback" not in missing.stderr
