"""Data-parallel training: two CPU processes (gloo) under torchrun on the tiny preset."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from coordgan.checkpoint import load

ROOT = Path(__file__).resolve().parents[1]


def test_torchrun_two_processes_gloo(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "coordgan.cli", "train", "--preset", "tiny", "--data", "synthetic-faces", "--out", str(out),
           "--steps", "3", "--batch", "4", "--ckpt-every", "2", "--lpips-net", "alex", "--lpips-random-backbone",
           "--workers", "0", "--device", "cpu"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # Rank 0 alone writes; each checkpoint first checks that both ranks hold identical weights.
    assert result.stdout.count("done: step 3") == 1
    assert json.loads((out / "latest.json").read_text())["step"] == 3
    ck = load(out / "checkpoints" / "step_000003.safetensors")
    assert set(ck.networks) == {"g", "g_ema", "d", "d_patch"}
    assert all(torch.isfinite(p).all() for net in ck.networks.values() for p in net.parameters())
    info = json.loads((out / "run.json").read_text())
    assert info["world_size"] == 2 and info["global_batch"] == 4 and info["options"]["batch"] == 2
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
